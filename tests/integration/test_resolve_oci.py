"""Resolution against a real registry (Debian's docker-registry on loopback)."""

import socket

import pytest

from coursehub.registry import (
    OciClient,
    RegistryPolicy,
    ResolvedImage,
    ResolveError,
    parse_reference,
    resolve_image,
)
from coursehub.registry.oci import resolve_oci

# The test registries are plain HTTP on loopback: named explicitly, as the e2e operator and
# `make demo` name theirs (COURSEHUB_INSECURE_REGISTRIES=127.0.0.1).
LOOPBACK = RegistryPolicy(insecure_registries=("127.0.0.1",))


async def resolve(ref: str, **kwargs) -> ResolvedImage:
    kwargs.setdefault("policy", LOOPBACK)
    return await resolve_image(ref, **kwargs)


async def resolve_error(ref: str, **kwargs) -> ResolveError:
    with pytest.raises(ResolveError) as caught:
        await resolve(ref, **kwargs)
    return caught.value


async def test_tag_resolves_to_pushed_digest(oci_registry, unique_repo):
    digest = oci_registry.push_image(unique_repo, "v1", "first build")
    resolved = await resolve(oci_registry.ref(unique_repo, "v1"))
    assert resolved.digest == digest
    assert resolved.repository == f"{oci_registry.host}/{unique_repo}"
    assert resolved.pinned == f"{oci_registry.host}/{unique_repo}@{digest}"


@pytest.mark.parametrize("media", ["oci", "docker"])
async def test_moved_tag_resolves_to_new_digest(oci_registry, unique_repo, media):
    ref = oci_registry.ref(unique_repo, "uai_source-uai.1")
    first = oci_registry.push_image(unique_repo, "uai_source-uai.1", "build 1", media=media)
    assert (await resolve(ref)).digest == first
    second = oci_registry.push_image(unique_repo, "uai_source-uai.1", "build 2", media=media)
    assert second != first
    assert (await resolve(ref)).digest == second


async def test_digest_reference_is_verified(oci_registry, unique_repo):
    digest = oci_registry.push_image(unique_repo, "v1", "pinned")
    resolved = await resolve(oci_registry.ref(unique_repo, digest=digest))
    assert resolved.digest == digest
    # A tag next to a digest is informational: the digest decides, as for the kubelet.
    resolved = await resolve(oci_registry.ref(unique_repo, "whatever", digest))
    assert resolved.pinned == f"{oci_registry.host}/{unique_repo}@{digest}"

    missing = "sha256:" + "0" * 64
    error = await resolve_error(oci_registry.ref(unique_repo, digest=missing))
    assert error.reason == "ImageNotFound"
    assert missing in error.message


async def test_unknown_tag(oci_registry, unique_repo):
    oci_registry.push_image(unique_repo, "v1", "exists")
    error = await resolve_error(oci_registry.ref(unique_repo, "v2"))
    assert error.reason == "ImageNotFound"
    assert error.message == (
        f"tag 'v2' not found in {oci_registry.host}/{unique_repo}; push it or fix spec.image"
    )


async def test_unknown_repository(oci_registry, unique_repo):
    error = await resolve_error(oci_registry.ref(unique_repo, "v1"))
    assert error.reason == "ImageNotFound"
    assert f"repository '{unique_repo}' not found in {oci_registry.host}" in error.message


@pytest.mark.parametrize("media", ["oci", "docker"])
async def test_index_resolves_to_index_digest(oci_registry, unique_repo, media):
    # Multi-platform tags pin to the index (manifest list), never to one platform.
    index = oci_registry.push_index(unique_repo, "multi", "multi-arch", media=media)
    single_amd64 = oci_registry.push_image(
        unique_repo, None, "multi-arch", platform="linux/amd64", media=media
    )
    resolved = await resolve(oci_registry.ref(unique_repo, "multi"))
    assert resolved.digest == index
    assert resolved.digest != single_amd64


async def test_image_copied_by_skopeo(oci_registry, unique_repo):
    digest = oci_registry.skopeo_copy(unique_repo, "from-layout", "skopeo build")
    assert (await resolve(oci_registry.ref(unique_repo, "from-layout"))).digest == digest


async def test_auth_required_without_credentials(oci_registry_auth, unique_repo):
    oci_registry_auth.push_image(unique_repo, "v1", "private")
    error = await resolve_error(oci_registry_auth.ref(unique_repo, "v1"))
    assert error.reason == "RegistryUnauthorized"
    assert "dockerconfigjson Secret" in error.message
    # A pull secret for another registry does not help.
    error = await resolve_error(
        oci_registry_auth.ref(unique_repo, "v1"),
        docker_config={"auths": {"other.example.edu": {"username": "u", "password": "p"}}},
    )
    assert error.reason == "RegistryUnauthorized"


async def test_auth_with_dockerconfigjson(oci_registry_auth, unique_repo):
    digest = oci_registry_auth.push_image(unique_repo, "v1", "private")
    resolved = await resolve(
        oci_registry_auth.ref(unique_repo, "v1"),
        docker_config=oci_registry_auth.docker_config,
    )
    assert resolved.digest == digest
    # username/password entries, keyed with a scheme, work the same way.
    config = {
        "auths": {
            f"http://{oci_registry_auth.host}": {
                "username": oci_registry_auth.username,
                "password": oci_registry_auth.password,
            }
        }
    }
    assert (await resolve(oci_registry_auth.ref(unique_repo, "v1"), docker_config=config)).digest == digest
    # Errors behind auth are still precise.
    error = await resolve_error(
        oci_registry_auth.ref(unique_repo, "v9"),
        docker_config=oci_registry_auth.docker_config,
    )
    assert error.reason == "ImageNotFound"


async def test_wrong_credentials(oci_registry_auth, unique_repo):
    oci_registry_auth.push_image(unique_repo, "v1", "private")
    error = await resolve_error(
        oci_registry_auth.ref(unique_repo, "v1"),
        docker_config={
            "auths": {
                oci_registry_auth.host: {
                    "username": oci_registry_auth.username,
                    "password": "wrong",
                }
            }
        },
    )
    assert error.reason == "RegistryUnauthorized"
    assert "rejected the credentials" in error.message


async def test_bearer_token_flow(oci_registry_token, unique_repo):
    registry = oci_registry_token
    digest = registry.push_image(unique_repo, "v1", "behind a token service")
    ref = registry.ref(unique_repo, "v1")
    assert (await resolve(ref, docker_config=registry.docker_config)).digest == digest
    # The token service saw our user and was asked for exactly pull on this repository.
    assert (
        registry.username,
        f"repository:{unique_repo}:pull",
    ) in registry.tokens.requests

    # Anonymous: the token grants nothing, so the registry refuses the manifest.
    error = await resolve_error(ref)
    assert error.reason == "RegistryUnauthorized"
    assert "requires credentials" in error.message

    # Wrong password: the token service itself refuses.
    wrong = {"auths": {registry.host: {"username": registry.username, "password": "wrong"}}}
    error = await resolve_error(ref, docker_config=wrong)
    assert error.reason == "RegistryUnauthorized"
    assert "rejected the credentials" in error.message

    error = await resolve_error(registry.ref(unique_repo, "v2"), docker_config=registry.docker_config)
    assert error.reason == "ImageNotFound"


async def test_registry_down_then_back(oci_registry_factory):
    registry = oci_registry_factory()
    digest = registry.push_image("courses/outage", "v1", "survives restarts")
    ref = registry.ref("courses/outage", "v1")
    registry.stop()
    error = await resolve_error(ref)
    assert error.reason == "RegistryUnreachable"
    assert registry.host in error.message
    registry.start()
    assert (await resolve(ref)).digest == digest


async def test_plain_http_only_for_listed_registries(oci_registry, unique_repo):
    oci_registry.push_image(unique_repo, "v1", "tls")
    ref = oci_registry.ref(unique_repo, "v1")
    # Nothing configured: a loopback registry is not reached at all.
    error = await resolve_error(ref, policy=RegistryPolicy())
    assert error.reason == "RegistryNotAllowed"
    # Allowed on a private address but not listed insecure: TLS, which it cannot speak.
    error = await resolve_error(ref, policy=RegistryPolicy(private_registries=("127.0.0.1",)))
    assert error.reason == "RegistryError"
    assert "insecure registries" in error.message
    assert (await resolve(ref, policy=RegistryPolicy(insecure_registries=(oci_registry.host,)))).digest


async def test_invalid_reference_is_not_sent_anywhere():
    error = await resolve_error("127.0.0.1:1/Courses:x")
    assert error.reason == "InvalidImageReference"
    assert "must be lowercase" in error.message
    # The CRD's grammar: a bare name (an implicit ':latest') is refused too.
    error = await resolve_error("127.0.0.1:1/courses")
    assert error.reason == "InvalidImageReference"
    assert "give a tag" in error.message


async def test_silent_registry_times_out():
    # A socket that accepts connections and never answers, like a hung registry.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ResolveError) as caught:
            await resolve_oci(parse_reference(f"{host}/courses/hung:v1"), policy=LOOPBACK, timeout=0.5)
    assert caught.value.reason == "RegistryUnreachable"
    assert "did not finish within 0.5s" in caught.value.message


@pytest.mark.parametrize("auth", [None, "htpasswd", "token"])
async def test_a_shared_client_keeps_one_connection_to_a_real_registry(
    oci_registry, oci_registry_auth, oci_registry_token, unique_repo, auth
):
    """The resolver's OciClient: every resolution of a round reuses the connection the first
    opened (the registry's 401 and manifest answers keep it alive), anonymous or not."""
    registry = {None: oci_registry, "htpasswd": oci_registry_auth, "token": oci_registry_token}[auth]
    digests = [registry.push_image(unique_repo, f"v{i}", f"build {i}") for i in range(5)]
    docker_config = registry.docker_config if auth else None
    async with OciClient(LOOPBACK) as client:
        for i, digest in enumerate(digests * 2):
            resolved = await resolve_image(
                registry.ref(unique_repo, f"v{i % 5}"), docker_config=docker_config, oci=client
            )
            assert resolved.digest == digest
        # The token service is a second origin: its own kept-alive connection.
        assert client.connections_opened == (2 if auth == "token" else 1)
