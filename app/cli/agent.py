"""``demoai agent``: create, list, show, run, export and import agents (and prompts, runs)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.core.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="agents: create, list, show, run, export, import, approvals")
    asub = p.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    c = asub.add_parser("create", help="create an agent (or a new version) from a JSON/YAML spec")
    c.add_argument(
        "spec",
        help="spec file (.json, .yaml or .yml); a tool is a name or {name, folder}; "
        'run_python sees its folder at /data, read-only unless "writable": true',
    )
    c.add_argument("--json", action="store_true", help="print the saved spec as JSON")
    c.set_defaults(func=cmd_create)

    ls = asub.add_parser("list", help="installed agents and prompts with their versions")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    sh = asub.add_parser("show", help="an agent spec")
    sh.add_argument("agent")
    sh.add_argument("--version", type=int, help="a version (default: the latest)")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_show)

    r = asub.add_parser(
        "run",
        help="run an agent on an input",
        description="Run an agent. Side-effecting tool calls are asked on the terminal; "
        "without a terminal they are denied, and --approve-all-read-only is required to "
        "acknowledge running unattended (read-only tools never need approval).",
    )
    r.add_argument("agent")
    r.add_argument("--input", required=True, help="the user's request")
    r.add_argument("--version", type=int, help="agent version (default: the latest)")
    r.add_argument(
        "--approve-all-read-only",
        action="store_true",
        help="run without a terminal: read-only tools run, side-effecting calls are denied",
    )
    r.add_argument("--base-url", help="an OpenAI-compatible server instead of the library model")
    r.add_argument("--api-key", help="its key (with --base-url)")
    r.add_argument("--model-name", help="model name to send to --base-url")
    r.add_argument("--seed", type=int, help="override the spec's seed")
    r.add_argument("--n-ctx", type=int, default=4096, help="context size of the local model")
    r.add_argument("--json", action="store_true", help="print the run and its steps as JSON")
    r.set_defaults(func=cmd_run)

    runs = asub.add_parser("runs", help="list or search agent runs")
    runs.add_argument("--agent")
    runs.add_argument("--search", help="text in the input, answer or any step")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    ex = asub.add_parser("export", help="export an agent, a prompt or a run as a bundle")
    ex.add_argument("name", help="agent name, prompt name or run id")
    ex.add_argument("dest", help="a new folder, or a path ending in .tar.gz")
    ex.add_argument("--kind", choices=("agent", "prompt", "run"), default="agent")
    ex.add_argument("--version", type=int, help="agent version (default: the latest)")
    ex.set_defaults(func=cmd_export)

    im = asub.add_parser(
        "import",
        help="import a bundle (checksums are verified first)",
        description="Import a bundle. It prints what the agent can do, computed from its spec; "
        "its MCP servers and side-effecting tools stay inactive until approved "
        "(demoai agent approvals approve NAME).",
    )
    im.add_argument("path")
    im.add_argument("--json", action="store_true")
    im.set_defaults(func=cmd_import)

    ap = asub.add_parser(
        "approvals",
        help="list, approve or revoke what agents may do",
        description="Approvals bind to one agent, the exact content of one spec version and "
        "exactly what was shown (an MCP server's argv and environment, a tool's folder). "
        "Any change of the spec asks again.",
    )
    apsub = ap.add_subparsers(dest="approvals_command", metavar="ACTION", required=True)
    al = apsub.add_parser("list", help="recorded approvals, and what still waits for one")
    al.add_argument("--agent", help="only this agent")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_approvals_list)
    aa = apsub.add_parser(
        "approve",
        help="approve an agent version's MCP servers and side-effecting tools",
        description="Shows exactly what each grant allows (argv and environment of an MCP "
        "server, a tool's folder) and asks on the terminal; --yes approves all of them.",
    )
    aa.add_argument("agent")
    aa.add_argument("--version", type=int, help="agent version (default: the latest)")
    aa.add_argument("--yes", action="store_true", help="approve every grant shown, without asking")
    aa.add_argument("--json", action="store_true")
    aa.set_defaults(func=cmd_approvals_approve)
    ar = apsub.add_parser("revoke", help="forget an approval (by id) or all of an agent's")
    ar.add_argument("id", nargs="?", type=int, help="approval id (see `approvals list`)")
    ar.add_argument("--agent", help="revoke every approval of this agent")
    ar.add_argument("--json", action="store_true")
    ar.set_defaults(func=cmd_approvals_revoke)


def _out(args: argparse.Namespace, obj: Any, text: str) -> None:
    if getattr(args, "json", False):
        from app.cli.common import print_json

        print_json(obj)
    else:
        print(text)


def _load_spec_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw)
        else:
            data = json.loads(raw)
    except Exception as exc:
        raise ConfigError(f"{path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain an object.")
    return data


def cmd_create(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents import AgentSpec, AgentStore

    spec = AgentSpec.from_dict(_load_spec_file(Path(args.spec)))
    from app.core.agents.approvals import ApprovalStore

    ws = open_workspace(args)
    try:
        saved = AgentStore(ws.db).save(spec)
        pending = ApprovalStore(ws.db).pending(saved)
    finally:
        ws.close()
    lines = [f"{saved.name} v{saved.version}"]
    for g in pending:
        lines.append(f"not active until approved: {g.describe()}")
    if pending:
        lines.append(f"approve with: demoai agent approvals approve {saved.name}")
    _out(args, saved.to_dict(), "\n".join(lines))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents import AgentStore, PromptStore

    ws = open_workspace(args)
    try:
        store, prompts = AgentStore(ws.db), PromptStore(ws.db)
        agents: list[dict[str, Any]] = [
            {
                "name": s.name,
                "version": s.version,
                "versions": store.versions(s.name),
                "model": s.model_id,
                "tools": [t.name for t in s.tools],
                "mcp_servers": [m.name for m in s.mcp_servers],
                "description": s.description,
            }
            for s in store.list()
        ]
        plist = [
            {"name": p.name, "version": p.version, "variables": p.variables} for p in prompts.list()
        ]
    finally:
        ws.close()
    lines = ["Agents:"] + [
        f"  {a['name']} v{a['version']}  model={a['model'] or '-'}  tools={','.join(a['tools']) or '-'}"
        for a in agents
    ]
    lines += ["Prompts:"] + [f"  {p['name']} v{p['version']}" for p in plist]
    _out(args, {"agents": agents, "prompts": plist}, "\n".join(lines))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents import AgentStore

    ws = open_workspace(args)
    try:
        spec = AgentStore(ws.db).get(args.agent, args.version)
    finally:
        ws.close()
    _out(args, spec.to_dict(), json.dumps(spec.to_dict(), indent=2))
    return 0


def _ask_terminal(what: str, question: str) -> str:
    """Show ``what`` on the terminal and ask ``question`` until the answer is once/always/deny."""
    sys.stderr.write(what)
    while True:
        sys.stderr.write(f"{question} [o]nce / [a]lways for this agent version / [d]eny: ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer in ("o", "once"):
            return "once"
        if answer in ("a", "always"):
            return "always"
        if answer in ("d", "deny", "n", "no", ""):
            return "deny"


def _ask(call: Any) -> str:
    """Ask on the terminal whether a side-effecting call may run."""
    args = json.dumps(call.arguments, ensure_ascii=False)
    if len(args) > 500:
        args = args[:500] + "…"
    return _ask_terminal(f"\nThe agent wants to run {call.tool} with {args}\n", "Allow?")


def _ask_grant(grant: Any) -> str:
    """Ask on the terminal whether an MCP server may start / a side-effecting tool be offered."""
    what = f"\nThis agent version needs your approval:\n  {grant.describe()}\n"
    return _ask_terminal(what, "Allow?")


def _inactive(agent: str) -> Any:
    def report(grant: Any) -> None:
        what = "not started" if grant.kind == "mcp_server" else "not offered"
        sys.stderr.write(
            f"{what}: {grant.describe().splitlines()[0]} - not approved for this version of "
            f"{agent} (demoai agent approvals approve {agent})\n"
        )

    return report


def _deny_unattended(call: Any) -> str:
    sys.stderr.write(f"denied: {call.tool} changes things and needs approval on a terminal\n")
    return "deny"


@contextlib.contextmanager
def _client(ws: Any, spec: Any, args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """(chat client, embedder_for) for the agent's model and its tools' embedding models."""
    from app.core.agents import OpenAIChatClient
    from app.core.agents.docindex import OpenAIEmbedder
    from app.core.agents.loop import embedding_models

    if args.base_url:
        if not args.api_key:
            raise ConfigError("--base-url needs --api-key.")
        yield (
            OpenAIChatClient(args.base_url, args.api_key, model=args.model_name),
            lambda mid: OpenAIEmbedder(args.base_url, args.api_key, mid),
        )
        return
    if not spec.model_id:
        raise ConfigError(
            f"Agent {spec.name} names no model.", "Set model in its spec, or pass --base-url."
        )
    from app.core.models.registry import ModelRegistry
    from app.workers.host_client import HostProcess

    rec = ModelRegistry(ws).get(spec.model_id)
    if spec.model_sha256 and rec.sha256 != spec.model_sha256:
        raise ConfigError(
            f"The library model {rec.id} is not the one agent {spec.name} was made with "
            f"(sha256 {rec.sha256[:12]}…, expected {spec.model_sha256[:12]}…).",
            "Import the exact model, or save a new agent version for this one.",
        )
    served = {rec.id: (rec.path, rec.format)}
    for mid in embedding_models(spec):
        emb = ModelRegistry(ws).get(mid)
        served[emb.id] = (emb.path, emb.format)
    host = HostProcess(
        threads=ws.settings.threads,
        n_ctx=args.n_ctx,
        request_log=ws.root / "logs" / "requests.jsonl",
    )
    host.start(served, template=spec.template)
    try:
        yield (
            OpenAIChatClient(host.base_url, host.token, model=rec.id),
            lambda mid: OpenAIEmbedder(host.base_url, host.token, mid),
        )
    finally:
        host.stop()


def cmd_run(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents import AgentStore, RunStore, agent_tools, run_agent
    from app.core.agents.runs import STOPPED_STATES

    tty = sys.stdin.isatty() and sys.stderr.isatty()
    if not tty and not args.approve_all_read_only:
        raise ConfigError(
            "Not on a terminal: nobody can approve tool calls.",
            "Pass --approve-all-read-only to run unattended (side-effecting calls are denied).",
        )
    from app.core.agents.approvals import ApprovalStore

    approve = _ask if tty else _deny_unattended
    ws = open_workspace(args)
    try:
        agents = AgentStore(ws.db)
        spec = agents.get(args.agent, args.version)
        # Unattended, nothing unapproved starts; on a terminal the user is asked.
        gate = ApprovalStore(ws.db).gate(spec, _ask_grant if tty else None)

        def show(step: Any) -> None:
            if args.json or step.kind in ("system", "user"):
                return
            kind = "repeated call, not run" if step.data.get("repeated") else step.kind
            label = kind + (f" {step.tool}" if step.tool else "")
            text = step.content if len(step.content) <= 400 else step.content[:400] + "…"
            print(f"[{label}] {text}", file=sys.stderr)

        with (
            _client(ws, spec, args) as (client, embedder_for),
            agent_tools(
                spec,
                embedder_for=embedder_for,
                index_dir=ws.root / "agents" / "index",
                gate=gate,
                on_inactive=_inactive(spec.name),
            ) as tools,
        ):
            result = run_agent(
                spec,
                args.input,
                client=client,
                runs=RunStore(ws.db),
                tools=tools,
                approve=approve,
                agents=agents,
                seed=args.seed,
                on_step=show,
            )
    finally:
        ws.close()
    if args.json:
        from app.cli.common import print_json

        print_json({"run": result.run.to_dict(), "steps": [s.to_dict() for s in result.steps]})
    elif result.final is not None:
        print(result.final)
    if result.status in STOPPED_STATES:
        # Not an error: the agent used the turns its spec allows without a final answer.
        print(
            f"demoai: agent run {result.run.id} stopped: {result.error}. "
            "To give it more turns, raise limits.max_steps in the agent's spec and run it again.",
            file=sys.stderr,
        )
        return 1
    if result.status != "succeeded":
        print(f"demoai: agent run {result.run.id} {result.status}: {result.error}", file=sys.stderr)
        return 1
    print(f"run {result.run.id}", file=sys.stderr)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents import RunStore

    ws = open_workspace(args)
    try:
        runs = RunStore(ws.db).list(agent=args.agent, text=args.search)
    finally:
        ws.close()
    lines = [f"{r.id}  {r.agent} v{r.agent_version}  {r.status}  {r.input[:60]!r}" for r in runs]
    _out(args, [r.to_dict() for r in runs], "\n".join(lines) or "(no runs)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents import export_agent, export_prompt, export_run

    ws = open_workspace(args)
    dest = Path(args.dest)
    try:
        if args.kind == "agent":
            out = export_agent(ws.db, args.name, dest, version=args.version)
        elif args.kind == "prompt":
            out = export_prompt(ws.db, args.name, dest)
        else:
            out = export_run(ws.db, args.name, dest)
    finally:
        ws.close()
    print(out)
    return 0


def describe_import(report: Any) -> list[str]:
    """The import report as plain lines: what was added and what the agent can do."""
    from app.core.agents.approvals import describe_capabilities

    lines = [f"imported {x}" for x in report.imported]
    for what in report.undeclared:
        lines.append(f"WARNING: the bundle's own summary does not mention {what}")
    if report.capabilities is not None:
        lines += describe_capabilities(report.capabilities)
    if report.pending:
        lines.append("Inactive until you approve (exactly this spec version):")
        for g in report.pending:
            lines += [f"  {line}" for line in g["description"].splitlines()]
        if report.kind == "agent":
            lines.append(f"approve with: demoai agent approvals approve {report.name}")
    for m in report.missing_models:
        lines.append(
            f"missing model: {m['id']} (sha256 {m['sha256'] or '?'}): import it before running"
        )
    return lines


def cmd_import(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents import import_bundle

    ws = open_workspace(args)
    try:
        report = import_bundle(ws.db, Path(args.path))
    finally:
        ws.close()
    _out(args, report.to_dict(), "\n".join(describe_import(report)))
    return 0


def cmd_approvals_list(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents import AgentStore
    from app.core.agents.approvals import ApprovalStore

    ws = open_workspace(args)
    try:
        store = ApprovalStore(ws.db)
        approvals = store.list(args.agent)
        specs = AgentStore(ws.db).list()
        if args.agent is not None:
            specs = [s for s in specs if s.name == args.agent]
        pending = [(s, g) for s in specs for g in store.pending(s)]
    finally:
        ws.close()
    lines = []
    for a in approvals:
        versions = ",".join(f"v{v}" for v in a.versions) or "no stored version"
        lines.append(f"[{a.id}] {a.agent} ({versions}, spec {a.spec_hash[:12]}) {a.kind}: "
                     f"{a.describe()}  - {a.approved_by}")  # fmt: skip
    for spec, g in pending:
        lines.append(f"[waiting] {spec.name} v{spec.version}: {g.describe()}")
    obj = {
        "approvals": [a.to_dict() for a in approvals],
        "pending": [{"agent": s.name, "version": s.version, **g.to_dict()} for s, g in pending],
    }
    _out(args, obj, "\n".join(lines) or "(no approvals)")
    return 0


def cmd_approvals_approve(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents import AgentStore
    from app.core.agents.approvals import ApprovalStore

    tty = sys.stdin.isatty() and sys.stderr.isatty()
    if not args.yes and not tty:
        raise ConfigError(
            "Not on a terminal: nobody can confirm the approvals.",
            "Run it on a terminal, or pass --yes after reading `demoai agent approvals list`.",
        )
    ws = open_workspace(args)
    try:
        spec = AgentStore(ws.db).get(args.agent, args.version)
        store = ApprovalStore(ws.db)
        approved, declined = [], []
        for g in store.pending(spec):
            print(f"{spec.name} v{spec.version}: {g.describe()}", file=sys.stderr)
            ok = args.yes
            if not ok:
                sys.stderr.write("Approve for this version? [y/N]: ")
                sys.stderr.flush()
                ok = sys.stdin.readline().strip().lower() in ("y", "yes")
            if ok:
                store.approve(spec, g, by="user (command line)")
                approved.append(g)
            else:
                declined.append(g)
    finally:
        ws.close()
    lines = [f"approved: {g.describe()}" for g in approved]
    lines += [f"not approved: {g.describe().splitlines()[0]}" for g in declined]
    obj = {"agent": spec.name, "version": spec.version,
           "approved": [g.to_dict() for g in approved],
           "declined": [g.to_dict() for g in declined]}  # fmt: skip
    _out(args, obj, "\n".join(lines) or f"{spec.name} v{spec.version}: nothing waits for approval")
    return 0


def cmd_approvals_revoke(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.core.agents.approvals import ApprovalStore

    if (args.id is None) == (args.agent is None):
        raise ConfigError("Name one approval id, or --agent NAME for all of an agent's.")
    ws = open_workspace(args)
    try:
        store = ApprovalStore(ws.db)
        if args.id is not None:
            gone = store.revoke(args.id)
            obj: Any = gone.to_dict()
            text = f"revoked [{gone.id}] {gone.agent} {gone.kind}: {gone.describe()}"
        else:
            n = store.revoke_agent(args.agent)
            obj, text = (
                {"agent": args.agent, "revoked": n},
                f"revoked {n} approval(s) of {args.agent}",
            )
    finally:
        ws.close()
    _out(args, obj, text)
    return 0
