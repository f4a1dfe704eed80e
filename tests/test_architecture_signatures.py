"""ARCHITECTURE.md's "Contracts between the packages" against the code: every ``def`` written in
the section's code blocks is compared with ``inspect.signature`` of the real callable, so the map
cannot drift from what the packages call.

How the section is read:

- ``# path/to/module.py ...`` at the start of a comment line names the module of what follows;
  ``class Name...:`` at the left margin the class whose methods follow (indented ``def`` lines);
  ``; def`` puts two methods on one line; a signature may run over several lines.
- Parameter names, their order and kind (``*``: keyword-only after it), ``async``, and whether a
  parameter has a default are always compared; an annotation, a default and a return type only
  where the map writes one (a default written ``...`` only says there is one).
- A bare ``...`` among the parameters stands for parameters left out there; each must have a default
  (the map's call still works).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ELIDED = "__elided__"


@dataclass
class Documented:
    module: str
    owner: str | None  # the class, or None for a module-level function
    name: str
    source: str  # the def as written (joined), for messages
    node: ast.FunctionDef | ast.AsyncFunctionDef = field(repr=False)

    @property
    def where(self) -> str:
        return f"{self.module}:{self.owner + '.' if self.owner else ''}{self.name}"


def contracts_section(text: str) -> str:
    start = text.index("## Contracts between the packages")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def code_blocks(section: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"```python\n(.*?)```", section, re.S)]


def _strip_comment(line: str) -> str:
    """The line without its trailing ``# comment`` (no '#' appears inside the map's signatures)."""
    return line.split("#", 1)[0].rstrip()


def _balanced(text: str) -> bool:
    return text.count("(") == text.count(")") and text.count("[") == text.count("]")


def parse_def(text: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    """One written signature as an AST (``...`` among the parameters becomes a marker)."""
    text = re.sub(r"(?<=[(,])\s*\.\.\.\s*(?=[,)])", f" {ELIDED}=...", text.strip())
    tree = ast.parse(text + ": pass")
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    return node


def documented(text: str) -> list[Documented]:
    found: list[Documented] = []
    for block in code_blocks(contracts_section(text)):
        module: str | None = None
        owner: str | None = None
        pending: list[str] = []
        for line in block:
            if pending:
                pending.append(_strip_comment(line))
                joined = " ".join(pending)
                if _balanced(joined):
                    found.extend(_defs(joined, module, owner))
                    pending = []
                continue
            stripped = line.strip()
            if match := re.match(r"#\s*([a-z_]+(?:/[a-z_]+)+)\.py\b", stripped):
                module, owner = match.group(1).replace("/", "."), None
                continue
            if match := re.match(r"class (\w+)", line):
                owner = match.group(1)
                continue
            if not re.match(r"(async )?def ", stripped):
                continue
            if not line.startswith(" "):
                owner = None
            code = _strip_comment(line)
            if _balanced(code):
                found.extend(_defs(code, module, owner))
            else:
                pending = [code]
        assert not pending, f"unfinished signature in ARCHITECTURE.md: {pending}"
    return found


def _defs(code: str, module: str | None, owner: str | None) -> list[Documented]:
    assert module is not None, f"no '# module.py' line before {code!r} in ARCHITECTURE.md"
    out = []
    for part in re.split(r";\s*(?=(?:async )?def )", code.strip()):
        node = parse_def(part)
        out.append(Documented(module, owner, node.name, part.strip(), node))
    return out


def _norm(expr: str) -> str:
    return ast.unparse(ast.parse(expr, mode="eval"))


def _annotation(annotation: object) -> str:
    """A real annotation as text (the packages use ``from __future__ import annotations``)."""
    if isinstance(annotation, str):
        return _norm(annotation)
    return _norm(inspect.formatannotation(annotation))


def real_callable(doc: Documented):
    target = importlib.import_module(doc.module)
    if doc.owner:
        target = getattr(target, doc.owner)
    return getattr(target, doc.name)


def differences(doc: Documented, func) -> list[str]:
    """What the map says of ``func`` that is not so."""
    node = doc.node
    problems = []
    if isinstance(node, ast.AsyncFunctionDef) != (
        inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    ):
        problems.append("async" if isinstance(node, ast.AsyncFunctionDef) else "not async")
    real = list(inspect.signature(func).parameters.values())
    args = node.args
    positional = args.posonlyargs + args.args
    pos_defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    written = [(a, d, False) for a, d in zip(positional, pos_defaults, strict=True)]
    written += [(a, d, True) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    i = 0
    for arg, default, keyword_only in written:
        if arg.arg == ELIDED:
            # what the map leaves out here: real parameters up to the next one it names
            following = [a.arg for a, _, _ in written[written.index((arg, default, keyword_only)) + 1 :]]
            while i < len(real) and real[i].name not in following:
                if real[i].default is inspect.Parameter.empty and real[i].kind not in (
                    inspect.Parameter.VAR_POSITIONAL,
                    inspect.Parameter.VAR_KEYWORD,
                ):
                    problems.append(f"{real[i].name} has no default but is left out")
                i += 1
            continue
        if i >= len(real):
            problems.append(f"{arg.arg}: no such parameter")
            continue
        param = real[i]
        i += 1
        if param.name != arg.arg:
            problems.append(f"parameter {arg.arg!r} is {param.name!r} in the code")
            continue
        if keyword_only != (param.kind is inspect.Parameter.KEYWORD_ONLY):
            problems.append(f"{arg.arg}: keyword-only is {param.kind is inspect.Parameter.KEYWORD_ONLY}")
        if (default is not None) != (param.default is not inspect.Parameter.empty):
            problems.append(f"{arg.arg}: has a default is {param.default is not inspect.Parameter.empty}")
        elif default is not None and not (isinstance(default, ast.Constant) and default.value is Ellipsis):
            try:
                value = ast.literal_eval(default)
            except ValueError:
                problems.append(f"{arg.arg}: write the default {ast.unparse(default)!r} as a literal or ...")
            else:
                if value != param.default:
                    problems.append(f"{arg.arg}: default is {param.default!r}")
        if arg.annotation is not None:
            if param.annotation is inspect.Parameter.empty:
                problems.append(f"{arg.arg}: not annotated in the code")
            elif _norm(ast.unparse(arg.annotation)) != _annotation(param.annotation):
                problems.append(f"{arg.arg}: annotated {_annotation(param.annotation)}")
    for param in real[i:]:
        problems.append(f"{param.name}: in the code, not in the map (write ... to leave it out)")
    if node.returns is not None:
        returns = inspect.signature(func).return_annotation
        if returns is inspect.Signature.empty:
            problems.append("no return annotation in the code")
        elif _norm(ast.unparse(node.returns)) != _annotation(returns):
            problems.append(f"returns {_annotation(returns)}")
    return problems


DOCUMENTED = documented((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))


def test_the_section_is_read():
    names = {doc.where for doc in DOCUMENTED}
    # one of each kind of line: a method, a multi-line def, a '; def' pair, a comment-named module
    assert {
        "dataset.manager:DatasetManager.set_label",
        "dataset.images:inspect_image",
        "trainer.model_store:ModelRegistry.history",
        "trainer.model_sync:push_latest_model",
        "app.main:create_app",
    } <= names
    assert len(DOCUMENTED) >= 40


@pytest.mark.parametrize("doc", DOCUMENTED, ids=lambda doc: doc.where)
def test_the_map_matches_the_code(doc):
    func = real_callable(doc)
    assert not differences(doc, func), f"ARCHITECTURE.md: {doc.source}\n  differs: {differences(doc, func)}"


def test_the_checker_sees_a_drift():
    def f(a: int, b: str = "x", *, c: float | None = None) -> dict:
        return {}

    def doc(text: str) -> Documented:
        return Documented("m", None, "f", text, parse_def(text))

    assert differences(doc("def f(a: int, b: str = 'x', *, c: float | None = None) -> dict"), f) == []
    assert differences(doc("def f(a, ...)"), f) == []
    assert differences(doc("def f(a: str, b='y', *, c=None) -> list"), f) == [
        "a: annotated int",
        "b: default is 'x'",
        "returns dict",
    ]
    assert differences(doc("def f(a, b)"), f) == [
        "b: has a default is True",
        "c: in the code, not in the map (write ... to leave it out)",
    ]
    assert differences(doc("def f(...)"), f) == ["a has no default but is left out"]
    assert differences(doc("async def f(a, b='x', c=None)"), f) == ["async", "c: keyword-only is True"]
