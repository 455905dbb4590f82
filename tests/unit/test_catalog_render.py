"""Rendering: parameters are data. A value cannot inject YAML or template code; template
output that is not a valid job spec is refused naming the template and the field."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from catalog_helpers import SERVICE_TEMPLATE, package

from walle.catalog import CatalogError, ServiceRef, render_package, resolve_values
from walle.catalog.render import yaml_value


def render(pkg, deps=None, **sets):
    return render_package(pkg, resolve_values(pkg, sets=sets), deps or {})


def env_of(spec) -> dict:
    return dict(spec.runtime.env)


def test_a_value_holding_template_syntax_is_written_literally():
    (spec,) = render(package("app"), greeting="{{ 7*7 }}{% if true %}x{% endif %}")
    assert env_of(spec)["GREETING"] == "{{ 7*7 }}{% if true %}x{% endif %}"


@pytest.mark.parametrize("value", [
    'hi", PATH: "/evil',            # close the quote and add a key
    "hi}\nkind: batch\nx: {",       # add lines and keys
    "hi', 'x': 'y",
    "&anchor *alias !!python/object:os.system",
    "- item\n- item",
])
def test_a_value_cannot_add_yaml_keys(value):
    try:
        (spec,) = render(package("app"), greeting=value)
    except CatalogError as err:  # refused by the spec parser, never interpreted
        assert "runtime.env.GREETING" in str(err) and "control character" in str(err)
        return
    assert env_of(spec) == {"GREETING": value}
    assert spec.kind == "service"


def test_sandbox_refuses_reaching_python_internals_from_a_template():
    evil = SERVICE_TEMPLATE.replace("{{ greeting }}",
                                    "{{ greeting.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(CatalogError, match="templates/job.yml.j2: .*unsafe"):
        render(package("app", template=evil))


def test_an_undefined_variable_is_an_error_not_an_empty_string():
    broken = SERVICE_TEMPLATE.replace("{{ greeting }}", "{{ greting }}")
    with pytest.raises(CatalogError, match="templates/job.yml.j2: 'greting' is undefined"):
        render(package("app", template=broken))


def test_a_template_syntax_error_names_the_line():
    broken = SERVICE_TEMPLATE.replace("{{ count }}", "{{ count ")
    with pytest.raises(CatalogError, match=r"templates/job.yml.j2: line \d+:"):
        render(package("app", template=broken))


def test_template_output_that_fails_job_validation_names_template_and_field():
    bad = SERVICE_TEMPLATE.replace("cpu: 0.1", "cpu: {{ count - 1 }}")
    with pytest.raises(CatalogError) as err:
        render(package("app", template=bad))
    assert "app 1.0.0: templates/job.yml.j2: resources.cpu:" in str(err.value)


def test_an_error_in_a_template_expression_names_the_template():
    broken = SERVICE_TEMPLATE.replace("{{ count }}", "{{ count / 0 }}")
    with pytest.raises(CatalogError, match="templates/job.yml.j2: division by zero"):
        render(package("app", template=broken))


def test_output_that_is_not_yaml_is_refused():
    with pytest.raises(CatalogError, match="renders to invalid YAML"):
        render(package("app", template="name: [unclosed\n"))


def test_dependencies_are_wired_through_the_environment():
    (spec,) = render(package("app"), deps={"kv-store": ServiceRef("kvstore", 6380)})
    assert env_of(spec) == {"GREETING": "hi",
                            "WALLE_DEP_KV_STORE_SERVICE": "kvstore.service.consul",
                            "WALLE_DEP_KV_STORE_PORT": "6380"}


def test_python_inline_ships_a_script_as_one_line_and_a_missing_file_is_named():
    tpl = SERVICE_TEMPLATE.replace('["-m", "http.server", {{ port }}]',
                                   '{{ python_inline("app.py") }}')
    (spec,) = render(package("app", template=tpl, files={"app.py": "print('hi')\n"}))
    assert spec.runtime.args[0] == "-c" and "\n" not in spec.runtime.args[1]
    ran = subprocess.run([sys.executable, *spec.runtime.args], capture_output=True, text=True,
                         timeout=60, check=True)
    assert ran.stdout == "hi\n"
    with pytest.raises(CatalogError, match="no files/other.py"):
        render(package("app", template=tpl.replace("app.py", "other.py")))


@pytest.mark.parametrize("value", ["é😀", "a\u2028b", "x\x7fy", "a\x85b", 'q"\n\\', "\U000e0001",
                                   "key: value", "{{ x }}", "# not a comment", "@at"])
def test_every_inserted_value_reads_back_as_exactly_itself(value):
    assert yaml.safe_load(f"k: {yaml_value(value)}\n") == {"k": value}
