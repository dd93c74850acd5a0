"""Refuse inputs that would bake a project that does not install, load or test.

cookiecutter runs this before it writes any file of the project; exiting non-zero makes it remove the
project folder, so a bad answer bakes nothing. Each message names the input, the value given and what
would be right. Only the standard library is used: the hook runs in whatever Python runs cookiecutter.
"""

import keyword
import re
import sys

# jsonify makes each value a JSON string, which is also a valid Python string literal, so quotes and
# backslashes in an answer cannot break this file.
ANSWERS = {
    "customer_name": {{ cookiecutter.customer_name|jsonify }},
    "plugin_name": {{ cookiecutter.plugin_name|jsonify }},
    "project_name": {{ cookiecutter.project_name|jsonify }},
    "package_name": {{ cookiecutter.package_name|jsonify }},
    "ldap_prefix": {{ cookiecutter.ldap_prefix|jsonify }},
    "version": {{ cookiecutter.version|jsonify }},
    "author_name": {{ cookiecutter.author_name|jsonify }},
    "author_email": {{ cookiecutter.author_email|jsonify }},
    "didmos_version": {{ cookiecutter.didmos_version|jsonify }},
    "oid_arc": {{ cookiecutter.oid_arc|jsonify }},
}
VALUES = {key: str(value) for key, value in ANSWERS.items()}

# Settings namespaces, entry-point names and URL prefixes that didmos itself uses: a plugin named like
# one of them would take over its settings or collide with its routes.
RESERVED_NAMES = {
    "api", "auth", "directory", "ldap", "pdp", "redis", "scim", "tasks", "notify", "requests", "lifecycle",
    "healthz", "readyz", "metrics", "openapi", "oauth", "didmos", "plugins", "config", "serve", "worker", "dev",
}

# Schemas that didmos's directories load (cn=<name>,cn=schema,cn=config): our schema entry is cn=<ldap_prefix>.
LDAP_SCHEMAS = {"core", "cosine", "nis", "inetorgperson", "ppolicy", "dyngroup", "misc", "openldap", "duaconf",
                "corba", "java", "collective", "pmi", "msuser", "namedobject", "dsee", "rbac"}

# PEP 440, Appendix B (canonical public version identifiers and the permitted variations).
PEP440 = re.compile(r"""
    v?(?:(?:(?P<epoch>[0-9]+)!)?(?P<release>[0-9]+(?:\.[0-9]+)*)
    (?P<pre>[-_\.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_\.]?[0-9]*)?
    (?P<post>(?:-[0-9]+)|(?:[-_\.]?(?:post|rev|r)[-_\.]?[0-9]*))?
    (?P<dev>[-_\.]?dev[-_\.]?[0-9]*)?)
    (?:\+(?P<local>[a-z0-9]+(?:[-_\.][a-z0-9]+)*))?
""", re.VERBOSE | re.IGNORECASE)
# PEP 508 distribution names.
DISTRIBUTION = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\".]+$")
OID_ARC = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def problems(values: dict[str, str]) -> list[str]:
    """What is wrong with ``values``, one sentence each; empty when everything is fine."""
    found = []

    def bad(key: str, what: str) -> None:
        found.append(f"{key} {values[key]!r} is not valid: {what}")

    customer = values["customer_name"]
    if not customer.strip() or len(customer) > 64 or not customer.isprintable() or '"' in customer \
            or "\\" in customer:
        bad("customer_name", "give 1 to 64 printable characters without quotes or backslashes, such as 'ACME'")

    plugin = values["plugin_name"]
    if not re.fullmatch(r"[a-z][a-z0-9_]{1,31}", plugin) or keyword.iskeyword(plugin):
        bad("plugin_name", "it must be a lowercase Python identifier of 2 to 32 letters, digits and "
                           "underscores, starting with a letter, such as 'acme'")
    elif plugin in RESERVED_NAMES or plugin.startswith("didmos"):
        bad("plugin_name", "didmos uses that name itself (settings namespace, plugin or URL); choose your "
                           "organisation's name, such as 'acme'")

    project = values["project_name"]
    if not DISTRIBUTION.fullmatch(project):
        bad("project_name", "a distribution name has letters, digits, '.', '_' and '-' and starts and ends "
                            "with a letter or digit (PEP 508), such as 'acme-didmos'")
    elif re.sub(r"[-_.]+", "-", project.lower()).startswith("didmos-"):
        bad("project_name", "names starting with 'didmos-' belong to didmos's own distributions; use "
                            "'<organisation>-didmos', such as 'acme-didmos'")

    package = values["package_name"]
    if not package.isidentifier() or keyword.iskeyword(package) or not package.isascii():
        bad("package_name", "it must be a Python identifier (letters, digits, underscores, not starting with "
                            "a digit, not a keyword), such as 'acme_didmos'")
    elif package.startswith("didmos") or package in ("tests", "test"):
        bad("package_name", "didmos and pytest use that name; use '<organisation>_didmos', such as 'acme_didmos'")

    if not re.fullmatch(r"[a-z][a-zA-Z0-9]{1,15}", values["ldap_prefix"]):
        bad("ldap_prefix", "LDAP attribute and class names need 2 to 16 ASCII letters and digits starting "
                           "with a lowercase letter, such as 'acme'")
    elif values["ldap_prefix"].lower().startswith("didmos") or values["ldap_prefix"].lower() in LDAP_SCHEMAS:
        bad("ldap_prefix", "that name belongs to didmos's or OpenLDAP's own schema; use your organisation's name, "
                           "such as 'acme'")

    if not PEP440.fullmatch(values["version"]):
        bad("version", "it must be a PEP 440 version, such as '0.1.0', '1.0.0rc1' or '2024.1'")

    author = values["author_name"]
    if not author.strip() or '"' in author or "\\" in author or not author.isprintable():
        bad("author_name", "give a name of printable characters without quotes or backslashes")

    if not EMAIL.fullmatch(values["author_email"]):
        bad("author_email", "it must be an email address such as 'it@acme.example'")

    if not re.fullmatch(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)", values["didmos_version"]):
        bad("didmos_version", "it must be MAJOR.MINOR of the didmos-host release to build against, such as '0.1'")

    arc = values["oid_arc"]
    if not OID_ARC.fullmatch(arc) or len(arc) > 100:
        bad("oid_arc", "it must be a dotted OID such as '2.25.<a UUID as an integer>' "
                       "(python3 -c \"import uuid; print(uuid.uuid4().int)\")")
    elif arc.startswith("2.25.21073491223040213337682851352587331213"):
        bad("oid_arc", "that is didmos's own arc; every customer schema needs an arc of its own")
    return found


def main() -> int:
    found = problems(VALUES)
    for problem in found:
        print(f"ERROR: {problem}", file=sys.stderr)
    if found:
        print("Nothing was generated; run cookiecutter again with valid values.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
