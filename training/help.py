"""`train.py --help` without importing torch, transformers or peft (8 s and 1 GB of RSS otherwise).

train.py's flags are the fields of its dataclasses: ours in training/arguments.py and, through
VLMTrainingArguments, transformers' TrainingArguments. Here those classes are read from their source files with
`ast`, never imported, and each field becomes the argument HfArgumentParser would make of it (the same option
strings, help, default and choices), in the same order. The dataclasses stay the one source of the flags:
tests/test_cli_help.py holds this parser equal to HfArgumentParser's, flag by flag.

Only the help is read here; train.py parses every real command line with HfArgumentParser itself.
"""

import argparse
import ast
import importlib.machinery
import os
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNKNOWN = object()  # a default this reader cannot evaluate (a value computed at import time): none is shown
REQUIRED = object()  # a field without a default


@dataclass
class Source:
    """One module's syntax tree, and where its `from X import Y` names come from."""

    path: str
    package: str  # the dotted package the module is in, for relative imports
    tree: ast.Module = field(init=False)

    def __post_init__(self):
        with open(self.path, encoding="utf-8") as f:
            self.tree = ast.parse(f.read(), self.path)

    def imported(self, name: str) -> "tuple[Source, str] | None":
        """The module a name is imported from, and its name there."""
        for node in self.tree.body:
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        module = node.module or ""
                        if node.level:  # relative: within this module's package
                            base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
                            module = ".".join([*base, module] if module else base)
                        source = load_source(module)
                        return (source, alias.name) if source else None
        return None

    def definition(self, name: str) -> "tuple[Source, ast.AST] | None":
        """A module-level class or simple assignment named `name`, here or where it is imported from."""
        for node in self.tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return self, node
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return self, node.value
        found = self.imported(name)
        return found[0].definition(found[1]) if found else None


_SOURCES: dict[str, "Source | None"] = {}


def load_source(module: str) -> "Source | None":
    """A module's source, found without importing it: ours under the repo root, others on sys.path (the path finder
    locates a package and runs none of its code)."""
    if module not in _SOURCES:
        top, *rest = module.split(".")
        if os.path.isdir(os.path.join(ROOT, top)):
            base = os.path.join(ROOT, top)
        else:
            spec = importlib.machinery.PathFinder.find_spec(top)
            base = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
        path = None
        if base:
            stem = os.path.join(base, *rest)
            path = next((p for p in (stem + ".py", os.path.join(stem, "__init__.py")) if os.path.isfile(p)), None)
        package = module if path and path.endswith("__init__.py") else module.rpartition(".")[0]
        _SOURCES[module] = Source(path, package) if path else None
    return _SOURCES[module]


def evaluate(node: ast.AST, source: Source, scope: dict):
    """A default or metadata value: a literal, a name bound in the class body or the module, `name.keys()`."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.Name):
        if node.id in scope:
            return scope[node.id]
        found = source.definition(node.id)
        if found and not isinstance(found[1], ast.ClassDef):
            return evaluate(found[1], found[0], {})
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "keys":
        value = evaluate(node.func.value, source, scope)
        return list(value) if isinstance(value, dict) else UNKNOWN
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        merged = {}
        for kw in node.keywords:  # dict(**other, key=value)
            value = evaluate(kw.value, source, scope)
            if value is UNKNOWN:
                return UNKNOWN
            merged.update(value if kw.arg is None else {kw.arg: value})
        return merged
    return UNKNOWN


def enum_values(source: Source, name: str) -> list | None:
    """The values of an Enum class (aliases, which share a value, once), or None when `name` is no such class."""
    found = source.definition(name)
    if not found or not isinstance(found[1], ast.ClassDef):
        return None
    values = []
    for node in found[1].body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value not in values:
            values.append(node.value.value)
    return values or None


def union_members(node: ast.AST) -> list[ast.AST]:
    """`A | B | C` and `Optional[A]` / `Union[A, B]` -> their members, in order."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return union_members(node.left) + union_members(node.right)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("Optional", "Union"):
        members = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return [*members, ast.Constant(None)] if node.value.id == "Optional" else list(members)
    return [node]


def is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def named(node: ast.AST, *names: str) -> bool:
    return isinstance(node, ast.Name) and node.id in names


def argument(name: str, annotation: ast.AST, call: ast.Call | None, source: Source, scope: dict):
    """HfArgumentParser._parse_dataclass_field's rules, on source: (option strings, keyword arguments, and the
    `--no_*` complement's option strings and keyword arguments, or None)."""
    keywords = {kw.arg: kw.value for kw in call.keywords} if call is not None else {}
    if "default" in keywords:
        default = evaluate(keywords["default"], source, scope)
    elif "default_factory" in keywords:
        factory = keywords["default_factory"]
        default = {"list": [], "dict": {}}.get(factory.id, UNKNOWN) if isinstance(factory, ast.Name) else UNKNOWN
    else:
        default = REQUIRED
    metadata = {}
    if "metadata" in keywords and isinstance(keywords["metadata"], ast.Dict):
        for key, value in zip(keywords["metadata"].keys, keywords["metadata"].values, strict=True):
            metadata[ast.literal_eval(key)] = evaluate(value, source, scope)
    aliases = metadata.pop("aliases", [])
    options = [f"--{name}", *([f"--{name.replace('_', '-')}"] if "_" in name else []),
               *([aliases] if isinstance(aliases, str) else aliases)]
    kwargs = {k: v for k, v in metadata.items() if v is not UNKNOWN}
    plain = dict(kwargs)  # what the `--no_*` complement of a bool field gets
    members = union_members(annotation)
    kind = annotation
    if len(members) > 1:  # HfArgumentParser keeps one member of a Union
        has_none, has_bool = any(map(is_none, members)), any(named(m, "bool") for m in members)
        if not has_none:
            kind = members[0] if named(members[1], "str") else members[1]
        elif not has_bool:
            kind = members[0] if is_none(members[1]) else members[1]
    required = default is REQUIRED
    literal = isinstance(kind, ast.Subscript) and named(kind.value, "Literal")
    choices = None if literal or not isinstance(kind, ast.Name) else enum_values(source, kind.id)
    complement = None
    if literal or choices:
        kwargs["choices"] = list(ast.literal_eval(kind.slice)) if literal else choices
    elif named(kind, "bool") or (len(members) == 2 and any(map(is_none, members)) and
                                 any(named(m, "bool") for m in members)):
        if named(kind, "bool") or default not in (None, REQUIRED):
            kwargs.update(nargs="?", const=True)
            default = False if required else default
            required = False
        if default is True:
            complement = ([f"--no_{name}", f"--no-{name.replace('_', '-')}"], plain)
    elif isinstance(kind, ast.Subscript) and named(kind.value, "list"):
        kwargs["nargs"] = "+"
        default = default if "default_factory" in keywords or required else None
    if required:
        kwargs["required"] = True
    else:  # a default computed at import time is not shown
        kwargs["default"] = argparse.SUPPRESS if default is UNKNOWN else default
    return options, kwargs, complement


def dataclass_fields(source: Source, class_name: str) -> list[tuple]:
    """(name, annotation, field call, defining source, class-body scope) of a dataclass and its dataclass bases,
    in dataclasses' order: base fields first, a field redefined by a subclass in its first place."""
    found = source.definition(class_name)
    if not found or not isinstance(found[1], ast.ClassDef):
        raise ValueError(f"{class_name} not found from {source.path}")
    where, node = found
    fields: dict[str, tuple] = {}
    for base in node.bases:
        if isinstance(base, ast.Name):
            for entry in dataclass_fields(where, base.id):
                fields[entry[0]] = entry
    scope = {}
    for statement in node.body:
        if isinstance(statement, ast.If):  # a name bound under a condition (`default_optim` by torch's version)
            scope.update({target.id: UNKNOWN for inner in ast.walk(statement) if isinstance(inner, ast.Assign)
                          for target in inner.targets if isinstance(target, ast.Name)})
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0],
                                                                                             ast.Name):
            scope[statement.targets[0].id] = evaluate(statement.value, where, scope)
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            value = statement.value
            if value is not None and not (isinstance(value, ast.Call) and named(value.func, "field")):
                value = ast.Call(ast.Name("field"), [], [ast.keyword("default", value)])
            fields[statement.target.id] = (statement.target.id, statement.annotation, value, where, dict(scope))
    return list(fields.values())


def build_parser(prog: str, description: str, classes: list[tuple[str, str]]) -> argparse.ArgumentParser:
    """The help parser of `classes`, [(module, class name)], as HfArgumentParser lays them out."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for module, class_name in classes:
        for name, annotation, call, source, scope in dataclass_fields(load_source(module), class_name):
            options, kwargs, complement = argument(name, annotation, call, source, scope)
            parser.add_argument(*options, dest=name, **kwargs)
            if complement:
                parser.add_argument(*complement[0], action="store_false", dest=name, **{**complement[1],
                                                                                        "default": False})
    return parser


HELP_FLAGS = {"-h", "--help"}
TRAIN_ARGUMENTS = [("training.arguments", name) for name in ("ModelArguments", "DataArguments", "VLMTrainingArguments")]


def train_help(description: str) -> argparse.ArgumentParser:
    """train.py's help parser: `train.py [CONFIG.yaml|.json] [flags]`, with HfArgumentParser's flags."""
    parser = build_parser("train.py", description, TRAIN_ARGUMENTS)
    parser.usage = "train.py [CONFIG.yaml | CONFIG.json] [--flag value ...]"
    return parser
