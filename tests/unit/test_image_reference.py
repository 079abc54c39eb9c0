"""Image reference parsing, validation, the CRD pattern and ECR host detection."""

import base64
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from coursehub import crds
from coursehub.registry import (
    COURSE_IMAGE_PATTERN,
    IMAGE_REFERENCE_PATTERN,
    NAME_LENGTH_PATTERN,
    InvalidImageReference,
    ResolveError,
    parse_ecr_host,
    parse_reference,
    pinned,
)
from coursehub.registry.oci import credentials_for, is_insecure, parse_challenge

DIGEST = "sha256:" + "ab12" * 16
ECR = "610119931565.dkr.ecr.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
        (
            "jupyter/scipy-notebook:2024-01-15",
            "docker.io",
            "jupyter/scipy-notebook",
            "2024-01-15",
            None,
        ),
        (
            "docker.io/jupyter/base-notebook",
            "docker.io",
            "jupyter/base-notebook",
            "latest",
            None,
        ),
        (
            "index.docker.io/library/python:3.11",
            "docker.io",
            "library/python",
            "3.11",
            None,
        ),
        ("docker.io/python", "docker.io", "library/python", "latest", None),
        (
            "quay.io/jupyter/minimal-notebook:latest",
            "quay.io",
            "jupyter/minimal-notebook",
            "latest",
            None,
        ),
        ("127.0.0.1:5000/courses:x", "127.0.0.1:5000", "courses", "x", None),
        ("localhost/a/b/c", "localhost", "a/b/c", "latest", None),
        ("localhost:5000/a", "localhost:5000", "a", "latest", None),
        ("registry:5000/a", "registry:5000", "a", "latest", None),
        ("[::1]:5000/a:b", "[::1]:5000", "a", "b", None),
        (
            f"{ECR}/ol-course-notebooks:uai_source-uai.1",
            ECR,
            "ol-course-notebooks",
            "uai_source-uai.1",
            None,
        ),
        (
            f"{ECR}/ol-course-notebooks@{DIGEST}",
            ECR,
            "ol-course-notebooks",
            None,
            DIGEST,
        ),
        (
            f"{ECR}/ol-course-notebooks:mitxt-6.3710.3x@{DIGEST}",
            ECR,
            "ol-course-notebooks",
            "mitxt-6.3710.3x",
            DIGEST,
        ),
        (
            "a__b/c--d/e.f_g:TAG_1.x-Y",
            "docker.io",
            "a__b/c--d/e.f_g",
            "TAG_1.x-Y",
            None,
        ),
        # A bare name with a "port-like" suffix is a tag, as in `docker pull`.
        ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ],
)
def test_parses(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert re.match(IMAGE_REFERENCE_PATTERN, text)


def test_derived_properties():
    ref = parse_reference("python:3.11")
    assert ref.name == "docker.io/library/python"
    assert ref.api_host == "registry-1.docker.io"
    assert ref.manifest_reference == "3.11"
    assert ref.pinned is None
    assert str(ref) == "docker.io/library/python:3.11"
    pinned_ref = parse_reference(f"127.0.0.1:5000/c:t@{DIGEST}")
    assert pinned_ref.manifest_reference == DIGEST
    assert pinned_ref.pinned == f"127.0.0.1:5000/c@{DIGEST}"
    assert pinned_ref.api_host == "127.0.0.1:5000"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("  ", "whitespace"),
        ("ubuntu :1", "whitespace or a control character at position 6"),
        ("courses\t:x", "whitespace"),
        ("https://127.0.0.1:5000/c:x", "URL scheme"),
        ("127.0.0.1:5000/Courses:x", "'Courses' must be lowercase"),
        ("Ubuntu", "must be lowercase"),
        ("Foo/bar", "must be lowercase"),
        ("c@sha256:abc", "64 hex characters, found 3"),
        ("c@sha256:" + "AB12" * 16, "lowercase hex"),
        ("c@md5:" + "a" * 32, "'md5' is not supported"),
        ("c@" + "a" * 64, "must look like 'sha256:"),
        (f"c@{DIGEST}@{DIGEST}", "more than one '@'"),
        ("c:", "tag after ':' is empty"),
        ("c:-x", "must not start with '.' or '-'"),
        ("c:" + "a" * 129, "limit is 128"),
        ("c:a/b", "registry host 'c:a'"),
        ("127.0.0.1:5000/", "has an empty component"),
        ("a//b", "empty component"),
        ("127.0.0.1:5000/a_-b", "'a_-b' may contain only"),
        ("-a", "'-a' may contain only"),
        ("a.", "'a.' may contain only"),
        ("host_name.com/x", "registry host 'host_name.com'"),
        ("-bad.com/x", "registry host '-bad.com'"),
        ("127.0.0.1:99999/x", "port 99999 is out of range"),
        (":5000/x", "registry host ':5000'"),
        (":v1", "repository name is missing"),
        ("@" + DIGEST, "repository name is missing"),
        ("a/" * 130 + "a", "limit is 255"),
    ],
)
def test_rejects_with_precise_message(text, fragment):
    with pytest.raises(InvalidImageReference) as caught:
        parse_reference(text)
    assert fragment in caught.value.message
    assert caught.value.reason == "InvalidImageReference"
    # Usable from pydantic validators and by callers that catch ResolveError.
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ResolveError)


def test_rejects_non_string():
    with pytest.raises(InvalidImageReference, match="must be a string"):
        parse_reference(None)  # type: ignore[arg-type]


# --- hypothesis: round trips ---------------------------------------------

_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--"])
_path_component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=2),
)
_label = st.from_regex(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?\Z")
_port = st.integers(1, 65535).map(str)
_domain = st.one_of(
    st.builds(
        lambda labels, port: ".".join(labels) + (f":{port}" if port else ""),
        st.lists(_label, min_size=2, max_size=4),
        st.none() | _port,
    ),
    st.builds(lambda label, port: f"{label}:{port}", _label, _port),
    st.just("localhost"),
    st.builds(lambda port: f"[::1]:{port}", _port),
)
_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
_digest = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


@given(
    domain=_domain,
    path=st.lists(_path_component, min_size=1, max_size=4),
    tag=st.none() | _tag,
    digest=st.none() | _digest,
)
def test_round_trip_with_domain(domain, path, tag, digest):
    text = f"{domain}/{'/'.join(path)}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    expected_registry = "docker.io" if domain == "index.docker.io" else domain
    assert ref.registry == expected_registry
    assert ref.repository == "/".join(path)
    assert ref.digest == digest
    assert ref.tag == (tag if tag or digest else "latest")
    assert parse_reference(str(ref)) == ref
    assert re.match(IMAGE_REFERENCE_PATTERN, text)
    if digest:
        assert ref.pinned == f"{ref.name}@{digest}"


@given(path=st.lists(_path_component, min_size=1, max_size=3), tag=st.none() | _tag)
def test_round_trip_docker_hub(path, tag):
    # Without a domain-like first component, the image is on Docker Hub.
    if "." in path[0] and len(path) > 1:
        path[0] = path[0].replace(".", "-")
    text = "/".join(path) + (f":{tag}" if tag else "")
    ref = parse_reference(text)
    assert ref.registry == "docker.io"
    expected = "/".join(path) if len(path) > 1 else f"library/{path[0]}"
    assert ref.repository == expected
    assert parse_reference(str(ref)) == ref


# Every character the grammar cares about, plus some it must refuse.
_soup = st.text("ab0Z.-_:/@[]s h256" + "f", max_size=40)


@given(text=st.one_of(_soup, st.builds(lambda a, d: a + "@" + d, _soup, _digest)))
@example("a.b/c")
@example("a__b.c/d")
@example("[abc]/x")
@example("localhost/x")
@example("a.b")
def test_crd_pattern_agrees_with_parser(text):
    """The API server (CRD pattern) and the operator must accept the same references."""
    try:
        parse_reference(text)
        parsed = True
    except InvalidImageReference:
        parsed = False
    assert bool(re.match(IMAGE_REFERENCE_PATTERN, text)) == parsed, text


@pytest.mark.parametrize("pattern", [IMAGE_REFERENCE_PATTERN, COURSE_IMAGE_PATTERN, NAME_LENGTH_PATTERN])
def test_crd_pattern_is_portable(pattern):
    # ECMA-262 and RE2 both lack lookaround, backreferences, possessive quantifiers
    # and Python-only syntax; the pattern must also be anchored.
    for construct in ("(?=", "(?!", "(?<", "(?P", "\\A", "\\Z", "*+", "++", "?+"):
        assert construct not in pattern
    assert not re.search(r"\\[1-9]", pattern)
    assert pattern.startswith("^") and pattern.endswith("$")
    assert "'" not in pattern and "\\" not in NAME_LENGTH_PATTERN  # inlined into a CEL string literal


# --- one grammar: the published CRD and the parser -------------------------


def _crd_image_schema() -> dict:
    crd = crds.course_image_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec["properties"]["image"]


def _search(pattern: str, text: str) -> bool:
    # In RE2 and ECMA-262 "$" is the end of the text; Python's also matches before a final "\n".
    return bool(re.search(pattern.removesuffix("$") + r"\Z", text))


def crd_accepts(text: str) -> bool:
    """What the API server does with spec.image: maxLength, pattern and the CEL rules."""
    schema = _crd_image_schema()
    if len(text) > schema["maxLength"] or not _search(schema["pattern"], text):
        return False
    for rule in schema.get("x-kubernetes-validations", []):
        # The only rule is self.matches('<RE2 pattern>'); evaluate that pattern.
        match = re.fullmatch(r"self\.matches\('([^']*)'\)", rule["rule"])
        assert match, f"unexpected CEL rule {rule['rule']!r}"
        if not _search(match.group(1), text):
            return False
    return True


def parser_accepts(text: str) -> bool:
    try:
        parse_reference(text, require_tag_or_digest=True)
    except InvalidImageReference:
        return False
    return True


NAME_255 = "r.example.edu/" + "a" * (255 - len("r.example.edu/"))
# (reference, valid) for spec.image; each row is asked of the parser and of the published CRD.
REFERENCE_TABLE = [
    ("ex.com:99999/x:1", False),  # passed the old CRD, refused by the parser: killed ECR retention
    ("[::1]:5000/x:1", True),  # parsed, refused by the old CRD
    ("ex.com:65535/x:1", True),
    ("ex.com:65536/x:1", False),
    ("ex.com:0/x:1", False),
    ("ex.com:080/x:1", False),
    ("ex.com:1/x:1", True),
    ("registry:5000/x:1", True),
    ("localhost/x:1", True),
    ("localhost:5000/x@" + DIGEST, True),
    ("[::1]/x:1", True),
    ("[fe80::1%25eth0]:5000/x:1", False),
    ("[:1]:5000/x:1", False),
    ("[abc]/x:1", False),
    ("x", False),  # a bare name means ":latest": a tag or digest is required
    ("ex.com/x", False),
    ("x:1", True),
    ("x@" + DIGEST, True),
    ("x:1@" + DIGEST, True),
    ("ex.com/X:1", False),
    ("ex.com/x:" + "t" * 128, True),
    ("ex.com/x:" + "t" * 129, False),
    (NAME_255 + ":1", True),
    (NAME_255 + "a:1", False),  # name 256 characters
    (NAME_255 + ":" + "t" * 128 + "@" + DIGEST, True),  # long, but the name is 255
    ("-ex.com/x:1", False),
    ("ex.com./x:1", False),
    ("ex..com/x:1", False),
    ("ex.com/x:1\n", False),
    ("https://ex.com/x:1", False),
]


@pytest.mark.parametrize(("text", "valid"), REFERENCE_TABLE)
def test_reference_table_parser_and_crd_agree(text, valid):
    assert parser_accepts(text) == valid, text
    assert crd_accepts(text) == valid, text


def test_bare_name_needs_tag_or_digest_only_for_course_images():
    assert parse_reference("ex.com/x").tag == "latest"
    with pytest.raises(InvalidImageReference, match="give a tag"):
        parse_reference("ex.com/x", require_tag_or_digest=True)


_soup_with_ports = st.text("ab0159Z.-_:/@[]s h2" + "6f", max_size=40)


@given(
    text=st.one_of(
        _soup_with_ports,
        st.builds(lambda a, d: a + "@" + d, _soup_with_ports, _digest),
        st.builds(
            lambda host, port, path, tag: f"{host}:{port}/{path}:{tag}",
            _label,
            st.integers(0, 99999).map(str) | st.from_regex(r"\A0[0-9]{1,4}\Z"),
            _path_component,
            _tag,
        ),
        st.builds(
            lambda name, tag: f"r.io/{name}:{tag}",
            st.text("ab/", min_size=240, max_size=260),
            _tag,
        ),
    )
)
@example("ex.com:99999/x:1")
@example("[::1]:5000/x:1")
def test_published_crd_agrees_with_parser(text):
    """Every spec.image the API server admits, the operator parses, and the other way round."""
    assert crd_accepts(text) == parser_accepts(text), text


# --- ECR hosts and pinning -------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (ECR, ("610119931565", "us-east-1")),
        (
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
            ("123456789012", "cn-north-1"),
        ),
        (
            "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
            ("123456789012", "us-gov-west-1"),
        ),
        (
            "123456789012.dkr.ecr.ap-southeast-2.amazonaws.com",
            ("123456789012", "ap-southeast-2"),
        ),
        ("public.ecr.aws", None),
        ("12345.dkr.ecr.us-east-1.amazonaws.com", None),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com:443", None),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com.evil.example", None),
        ("127.0.0.1:5000", None),
    ],
)
def test_parse_ecr_host(host, expected):
    assert parse_ecr_host(host) == expected


def test_pinned():
    assert pinned("127.0.0.1:5000/courses", DIGEST) == f"127.0.0.1:5000/courses@{DIGEST}"
    assert pinned("python", DIGEST) == f"docker.io/library/python@{DIGEST}"
    with pytest.raises(InvalidImageReference, match="must not carry a tag"):
        pinned("127.0.0.1:5000/courses:x", DIGEST)
    with pytest.raises(InvalidImageReference, match="64 hex"):
        pinned("127.0.0.1:5000/courses", "sha256:00")


# --- small pure pieces of the OCI client ----------------------------------


def test_credentials_from_dockerconfigjson():
    auth = base64.b64encode(b"alice:s3:cret").decode()
    config = {
        "auths": {
            "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
            "registry.example.edu:5000": {"auth": auth},
            "https://ghcr.io": {"auth": base64.b64encode(b"bob:tok").decode()},
        }
    }
    assert credentials_for("registry.example.edu:5000", config) == ("alice", "s3:cret")
    assert credentials_for("docker.io", config) == ("hub", "pw")
    assert credentials_for("ghcr.io", config) == ("bob", "tok")
    assert credentials_for("quay.io", config) is None
    assert credentials_for("ghcr.io", '{"auths": {"ghcr.io": {"username": "u", "password": "p"}}}') == (
        "u",
        "p",
    )
    assert credentials_for("ghcr.io", None) is None
    with pytest.raises(ResolveError) as caught:
        credentials_for("x.io", {"auths": {"x.io": {"auth": "!!!"}}})
    assert caught.value.reason == "RegistryUnauthorized"


def test_insecure_hosts():
    # Nothing is plain HTTP unless listed: loopback registries are named explicitly too.
    assert not is_insecure("127.0.0.1:5000")
    assert not is_insecure("localhost:1234")
    assert is_insecure("[::1]:5000", ["::1"])
    assert not is_insecure("registry.example.edu")
    assert is_insecure("registry.local:5000", ["registry.local"])
    assert is_insecure("registry.local:5000", ["registry.local:5000"])
    assert is_insecure("registry.local:5000", ["http://registry.local:5000/"])
    assert not is_insecure("registry.local:5001", ["registry.local:5000"])


def test_parse_challenge():
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/python:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/python:pull",
    }
    assert parse_challenge('Basic realm="coursehub-test"') == (
        "basic",
        {"realm": "coursehub-test"},
    )
