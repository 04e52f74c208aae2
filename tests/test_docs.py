"""The README's examples run as written, and docs/architecture.md describes the imports as they are."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import numpy as np

from napari_mobilesamv2 import EverythingOptions, MobileSAMv2, Segmentation
from napari_mobilesamv2.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "src" / "napari_mobilesamv2"
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def code_blocks(text: str, language: str) -> list[str]:
    """Contents of the fenced code blocks of `language` in a markdown text."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def section(text: str, heading: str) -> str:
    """A markdown section, from its heading to the next heading of that level."""
    start = text.index(heading + "\n")
    level = heading.split()[0]
    end = text.find(f"\n{level} ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def test_the_readme_python_example_runs_as_written(tiny_pipeline, monkeypatch, capsys):
    """The example, unchanged, on the small random-weight pipeline instead of the downloaded one."""
    example, = code_blocks(README.read_text("utf-8"), "python")
    loaded, options_seen = [], []

    def from_pretrained(encoder="efficientvit_l2", **kwargs):
        loaded.append((encoder, kwargs))
        return tiny_pipeline

    steps = tiny_pipeline.segment_everything_steps

    def recording_steps(image, options, **kwargs):
        options_seen.append(options)
        return steps(image, options, **kwargs)

    monkeypatch.setattr(MobileSAMv2, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setattr(tiny_pipeline, "segment_everything_steps", recording_steps)
    monkeypatch.chdir(ROOT)
    names: dict = {"__name__": "__main__"}
    exec(compile(example, str(README), "exec"), names)

    assert loaded == [("efficientvit_l2", {"device": "auto"})]
    assert names["image"].shape == (303, 384) and names["image"].dtype == np.uint8
    result = names["result"]
    assert isinstance(result, Segmentation)
    assert result.labels.shape == (303, 384) and result.labels.dtype == np.int32
    assert result.labels.max() <= len(result)
    assert list(names["table"]) == ["id", "x0", "y0", "x1", "y1", "score", "predicted_iou", "stability", "area",
                                    "visible_area"]
    assert options_seen == [EverythingOptions(), EverythingOptions(conf=0.3, max_prompts=100),
                            EverythingOptions(conf=0.3, max_prompts=100)]
    np.testing.assert_array_equal(names["fainter"].labels, names["same"].labels)
    assert len(names["clicked"]) == 2 and names["clicked"].strategy == "prompts"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "(303, 384) int32"
    assert printed[-1] == "2 objects"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings} - {"-h", "--help"}


def synopsis_flags() -> dict[str, set[str]]:
    """Flags in the README's command-line synopsis, per command ('' for the program itself)."""
    parser = build_parser()
    commands = _subparsers(parser)
    block = code_blocks(section(README.read_text("utf-8"), "## Command line"), "text")[0]
    found: dict[str, set[str]] = {}
    command = None
    for line in block.splitlines():
        if line.startswith("napari-mobilesamv2"):
            words = line.split()
            command = words[1] if len(words) > 1 and words[1] in commands else ""
        if command is not None:
            found.setdefault(command, set()).update(FLAG.findall(line))
    return found


def test_every_flag_of_the_readme_synopsis_exists():
    parser = build_parser()
    parsers = {"": parser, **_subparsers(parser)}
    found = synopsis_flags()
    assert set(found) == {"", "segment-everything", "segment-anything", "models", "evaluate", "train-detector"}
    for command, flags in found.items():
        unknown = flags - _flags_of(parsers[command])
        assert not unknown, f"the README names {sorted(unknown)} for {command or 'the program'}, which has no such flag"


def test_the_readme_synopsis_names_every_flag():
    parser = build_parser()
    parsers = {"": parser, **_subparsers(parser)}
    found = synopsis_flags()
    for command, command_parser in parsers.items():
        missing = _flags_of(command_parser) - found.get(command, set())
        assert not missing, f"the README synopsis of {command or 'the program'} lacks {sorted(missing)}"
    assert {"--no-download", "--exact", "--channel-axis", "--normalization", "--min-area"} <= found["segment-everything"]
    assert {"--version", "-v"} <= found[""]


def test_the_readme_links_the_documentation_that_exists():
    text = README.read_text("utf-8")
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert "docs/architecture.md" in links
    for link in links:
        assert (ROOT / link).is_file(), link


# -- docs/architecture.md ---------------------------------------------------------------------


def core_rows() -> list[list[str]]:
    """The rows of the core box of the diagram in docs/architecture.md, top to bottom."""
    diagram = code_blocks(section(ARCHITECTURE.read_text("utf-8"), "## Layers and the direction of imports"),
                          "text")[0]
    lines = diagram.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("| core"))
    rows = []
    for line in lines[start + 1:]:
        if line.strip().startswith("+"):
            break
        names = re.findall(r"[a-z_]+\.py|[a-z_]+/", line)
        if names:
            rows.append(names)
    return rows


def _entry(module: Path) -> str:
    """The diagram entry of a module of the package: 'engine.py', or 'decode/' for a subpackage."""
    relative = module.relative_to(PACKAGE)
    return relative.parts[0] + "/" if len(relative.parts) > 1 else relative.name


def _imported_entries(module: Path) -> set[str]:
    """Entries of the package that `module` imports (relative imports, at any depth of the code)."""
    package = module.parent.relative_to(PACKAGE).parts
    found = set()
    for node in ast.walk(ast.parse(module.read_text("utf-8"))):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = list(package[: len(package) - (node.level - 1)])
        targets = [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
        for parts in targets:
            if not parts:
                continue
            first = parts[0]
            found.add(first + "/" if (PACKAGE / first).is_dir() else first + ".py")
    return found


def test_the_architecture_diagram_lists_every_core_module():
    rows = core_rows()
    listed = [name for row in rows for name in row]
    core = {_entry(p) for p in PACKAGE.rglob("*.py")} - {"__init__.py", "cli.py", "napari/"}
    assert sorted(listed) == sorted(core)


def test_each_core_row_imports_only_the_rows_below():
    row_of = {name: i for i, row in enumerate(core_rows()) for name in row}
    wrong = []
    for module in PACKAGE.rglob("*.py"):
        entry = _entry(module)
        if entry not in row_of:
            continue
        for imported in _imported_entries(module) - {entry}:
            if imported == "napari/" or row_of.get(imported, -1) <= row_of[entry]:
                wrong.append(f"{module.relative_to(PACKAGE)} imports {imported}")
    assert not wrong, "docs/architecture.md: " + "; ".join(sorted(wrong))

