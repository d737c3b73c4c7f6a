"""README.md's command lines, and those of docs/commands.md (the stage-by-stage reference the
README points to), work as written: each program exists, every flag it passes is a flag of that
program and parses (config overrides included, `--only_check_args`), every repo path it names
exists, and the cheap ones (`--list`, `--dry_run`) run for real. Every relative link in
README.md and docs/*.md points to a file that exists."""

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The commands of the README and of the page its stage-by-stage reference moved to.
COMMAND_PAGES = ("README.md", "docs/commands.md")
README = "\n".join(open(os.path.join(REPO, page)).read() for page in COMMAND_PAGES)
DOC_PAGES = ["README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
SETUP = (".venv/bin/pip", ".venv-test/bin/pip", "pip")  # installs: not run here


def _commands() -> list[tuple[str, list[str], list[str]]]:
    """(text, argv, optional flags written as [--flag value]) of every shell command in the
    `bash` blocks of COMMAND_PAGES."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in text.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()  # comments
            for part in filter(None, (p.strip() for p in line.split("&&"))):
                optional = [a.split("|")[0] for group in re.findall(r"\[([^\]]*)\]", part)
                            for a in shlex.split(group)]
                argv = shlex.split(re.sub(r"\[[^\]]*\]", " ", part))
                if argv[0] == "python3" and argv[1:3] == ["-m", "venv"] or argv[0] in SETUP:
                    continue
                out.append((part, argv, optional))
    return out


COMMANDS = _commands()


def _program(argv: list[str]) -> tuple[str, list[str]]:
    """('-m module' or a script path, the arguments after it) of a `python ...` command."""
    assert os.path.basename(argv[0]) in ("python", "python3"), argv
    if argv[1] == "-m":
        return argv[2], argv[3:]
    return argv[1], argv[2:]


def test_the_readme_has_the_commands_it_documents():
    programs = {_program(argv)[0] for _, argv, _ in COMMANDS}
    for name in ("wallwm_jax.demo", "pytest", "data_builders.metaworld_events",
                 "wallwm_jax.train", "wallwm_jax.evaluation", "wallwm_jax.sweep",
                 "benchmarks/suite.py"):
        assert name in programs, name


@pytest.mark.parametrize("text,argv,optional", COMMANDS, ids=[c[0][:60] for c in COMMANDS])
def test_command_parses(text, argv, optional):
    program, args = _program(argv)
    if program.endswith(".py"):
        assert os.path.isfile(os.path.join(REPO, program)), f"{program} does not exist"
        cmd = [sys.executable, program]
    else:
        spec = importlib.util.find_spec(program)
        assert spec is not None, f"module {program} does not exist"
        cmd = [sys.executable, "-m", program]
    for arg in args + optional:  # repo paths (a config or sweep file, with its :arg)
        path = arg.split("=", 1)[-1].split(":", 1)[0]
        if re.match(r"^(experiments|benchmarks|docs|tests|wallwm_jax|data_builders)/", path):
            assert os.path.exists(os.path.join(REPO, path)), f"{text}: {path} does not exist"
    if program == "pytest":
        assert set(args) <= {"-q"} and os.path.isdir(os.path.join(REPO, "tests"))
        return
    # absl parses every flag (and applies --config.* overrides to the real config), then
    # stops before main; a flag it does not know, a bad value or field is exit 2.
    out = subprocess.run(cmd + args + optional + ["--only_check_args"], capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, f"{text}\n{out.stderr[-2000:]}"


def test_config_fields_named_in_the_readme_exist():
    from experiments.pretrain import get_config
    from wallwm_jax.sweep.hyper import all_paths

    paths = set(all_paths(get_config()))
    named = set(re.findall(r"--config\.([a-z_][\w.]*[A-Za-z_\d])", README))  # not FIELD
    named |= {n for n in re.findall(
        r"`((?:data|model|optimizer|checkpoint|eval|mesh)\.[\w.]+)", README)
        if not n.endswith((".md", ".py", ".json"))}  # file names such as `data.md`
    assert named, "no config fields found: the pattern is stale"
    missing = sorted(n for n in named if n not in paths)
    assert not missing, f"README names config fields that do not exist: {missing}"


def test_repo_paths_named_in_the_readme_exist():
    """Repo paths in links or in `code` in the README and every docs page (a test file cited
    as covering something must exist)."""
    missing, count = [], 0
    for page in DOC_PAGES:
        text = open(os.path.join(REPO, page)).read()
        named = set(re.findall(r"\]\(((?:docs|experiments|benchmarks|tests|wallwm_jax|"
                               r"data_builders)/[^)#\s]+)\)", text))
        named |= {p.rstrip("/") for p in re.findall(
            r"`((?:\.ci|docs|experiments|benchmarks|tests|wallwm_jax|data_builders)/[\w./-]*)`",
            text)}
        count += len(named)
        missing += [f"{page}: {p}" for p in sorted(named)
                    if not os.path.exists(os.path.join(REPO, p))]
    assert count > 20, count
    assert not missing, f"paths that do not exist: {missing}"


def _links(text: str) -> list[str]:
    """Targets of the markdown links and images of `text`, outside code blocks and spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


def test_relative_links_resolve():
    """Every relative link in README.md and docs/*.md points to a file or directory that
    exists (relative to the page), and an #anchor to a heading of that page."""
    checked, broken = 0, []
    for page in DOC_PAGES:
        for target in _links(open(os.path.join(REPO, page)).read()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path or
                                                 os.path.basename(page)))
            checked += 1
            if not os.path.exists(full):
                broken.append(f"{page}: {target}")
            elif anchor and full.endswith(".md") and anchor not in _anchors(full):
                broken.append(f"{page}: {target} (no such heading)")
    assert checked > 30, checked
    assert not broken, f"links that do not resolve: {broken}"


def _anchors(path: str) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped,
    spaces as hyphens."""
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_cheap_commands_run_for_real(tmp_path):
    listed = [argv for _, argv, optional in COMMANDS if "--list" in argv]
    assert listed, "the README lists the evaluation suites"
    for argv in listed:
        program, args = _program(argv)
        out = subprocess.run([sys.executable, "-m", program, *args], capture_output=True,
                             text=True, cwd=REPO, timeout=300)
        assert out.returncode == 0 and "mt10_seen:" in out.stdout, out.stderr[-2000:]
    dry = [(argv, optional) for _, argv, optional in COMMANDS if "--dry_run" in optional]
    assert dry, "the README shows a sweep dry run"
    for argv, _ in dry:
        program, args = _program(argv)
        args = [str(tmp_path / "sweep") if a == "/tmp/sweep" else a for a in args]
        out = subprocess.run([sys.executable, "-m", program, *args, "--dry_run"],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert re.search(r"sweep .*balance\.py.*: \d+ trials", out.stdout), out.stdout
        assert not (tmp_path / "sweep").exists()  # a dry run writes nothing


def test_dataset_paths_are_the_ones_the_builder_writes():
    """Every `metaworld_events/<config>/<version>` in the README is what the builder command
    above it (or the demo, with its default flags) writes, so the examples can be copied."""
    from data_builders.metaworld_events import metaworld_events as mwe

    (build,) = [argv for _, argv, _ in COMMANDS if "data_builders.metaworld_events" in argv]
    _, args = _program(build)
    value = {a: b for a, b in zip(args, args[1:], strict=False) if a.startswith("--")}
    built = mwe.make_config(value["--config"], episodes_per_task=int(value["--episodes_per_task"]))
    from wallwm_jax import demo as demo_cli

    demo = mwe.make_config(  # what the demo builds with its default flags
        "demo", episodes_per_task=demo_cli._EPISODES.default,
        image_size=demo_cli._IMAGE_SIZE.default, seed=demo_cli._SEED.default,
        privileged_state=demo_cli._PRIVILEGED.default,
        action_noise=demo_cli._NOISE.default)
    version = str(mwe.MetaworldEvents.VERSION)
    named = set(re.findall(r"metaworld_events/([\w.-]+)/(\d+\.\d+\.\d+)", README))
    assert (built.name, version) in named and (demo.name, version) in named, named
    assert named <= {(built.name, version), (demo.name, version)}, named
