"""The OPC-UA secure channel and user identity, for the agent's sources and for ``edge browse``.

``security: auto`` (the default) asks the server for its endpoints and takes the strongest one
that accepts the configured identity (a user name token when ``username`` is set, anonymous
otherwise): SignAndEncrypt over Sign, and among policies Aes256_Sha256_RsaPss, then
Aes128_Sha256_RsaOaep, then Basic256Sha256. It says which it chose. It takes security None only
when the server offers nothing else for that identity, with a warning. A secure choice needs the
client certificate (``plantstream edge certs create``); its absence is an error, never a silent
downgrade to None.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies as sp

from plantstream.edge.config import OpcuaSecurity
from plantstream.edge.opcua.pki import OWN_CERT, OWN_KEY, ServerTrust, application_uri, default_pki_dir, load_cert

log = logging.getLogger(__name__)

POLICIES: dict[str, type[sp.SecurityPolicy]] = {
    "Basic256Sha256": sp.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": sp.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": sp.SecurityPolicyAes256Sha256RsaPss,
}
# Strongest last. Policies the client does not implement (Basic128Rsa15, Basic256: deprecated)
# are never chosen.
_POLICY_RANK = {"None": 0, "Basic256Sha256": 1, "Aes128_Sha256_RsaOaep": 2, "Aes256_Sha256_RsaPss": 3}
_MODE_RANK = {ua.MessageSecurityMode.None_: 0, ua.MessageSecurityMode.Sign: 1, ua.MessageSecurityMode.SignAndEncrypt: 2}
_MODE_NAME = {ua.MessageSecurityMode.None_: "None", ua.MessageSecurityMode.Sign: "Sign", ua.MessageSecurityMode.SignAndEncrypt: "SignAndEncrypt"}  # fmt: skip


class NoUsableEndpoint(ConnectionError):
    """The server offers no endpoint this client can use with the configured identity."""


@dataclass(frozen=True, slots=True)
class Choice:
    policy: str  # a key of POLICIES, or "None"
    mode: str  # "None", "Sign" or "SignAndEncrypt"

    def __str__(self) -> str:
        return "None" if self.policy == "None" else f"{self.policy}/{self.mode}"


def _policy_name(uri: str) -> str | None:
    name = uri.rsplit("#", 1)[-1]
    return name if name in _POLICY_RANK else None


def _accepts(ep: ua.EndpointDescription, username: bool) -> bool:
    wanted = ua.UserTokenType.UserName if username else ua.UserTokenType.Anonymous
    return any(t.TokenType == wanted for t in (ep.UserIdentityTokens or []))


def choose(endpoints: list[ua.EndpointDescription], username: bool) -> Choice:
    """The strongest endpoint accepting the identity (see module doc); NoUsableEndpoint if none."""
    best: tuple[int, int] | None = None
    choice: Choice | None = None
    offered: list[str] = []
    for ep in endpoints:
        policy = _policy_name(ep.SecurityPolicyUri or "")
        mode = ep.SecurityMode
        offered.append(f"{(ep.SecurityPolicyUri or '?').rsplit('#', 1)[-1]}/{_MODE_NAME.get(mode, str(mode))}")
        if policy is None or mode not in _MODE_RANK or not _accepts(ep, username):
            continue
        if (policy == "None") != (mode == ua.MessageSecurityMode.None_):
            continue
        rank = (_MODE_RANK[mode], _POLICY_RANK[policy])
        if best is None or rank > best:
            best, choice = rank, Choice(policy, _MODE_NAME[mode])
    if choice is None:
        identity = "a user name" if username else "anonymous"
        raise NoUsableEndpoint(
            f"no endpoint accepts {identity} identity with a policy this client supports (offered: {', '.join(offered) or 'none'})"
        )
    return choice


async def secure(
    client: Client,
    sec: OpcuaSecurity,
    username: str | None,
    password: str | None,
    state_dir: Path,
    what: str,
) -> Choice:
    """Identity and secure channel for ``client`` before connect; returns what it set up.
    Certificate problems raise (the caller reports and retries)."""
    if username:
        client.set_user(username)
        client.set_password(password or "")
    if sec.policy == "auto":
        endpoints = await client.connect_and_get_server_endpoints()
        choice = choose(list(endpoints), bool(username))
        if choice.policy == "None":
            log.warning(
                "opcua: the server offers only security None for this identity; connecting unencrypted",
                extra={"kv": {"source": what, "security": "auto"}},
            )
        else:
            log.info("opcua: security auto chose %s", choice, extra={"kv": {"source": what}})
    else:
        choice = Choice(sec.policy, sec.mode)
    if choice.policy == "None":
        return choice
    pki = sec.pki_dir or default_pki_dir(state_dir)
    cert_path = sec.certificate or pki / OWN_CERT
    key_path = sec.private_key or pki / OWN_KEY
    if not cert_path.is_file() or not key_path.is_file():
        raise FileNotFoundError(
            f"security {choice} needs the client certificate {cert_path} and key {key_path}; "
            "run `plantstream edge certs create` (or set security.policy None explicitly)"
        )
    uri = application_uri(load_cert(cert_path))
    if uri:
        client.application_uri = uri  # must equal the certificate's URI or servers refuse the session
    if sec.trust_all_servers:
        log.warning(
            "opcua: trust_all_servers is set; server certificates are not checked", extra={"kv": {"source": what}}
        )
    else:
        validator = ServerTrust(pki)
        await validator.load()
        client.certificate_validator = validator
    await client.set_security(
        POLICIES[choice.policy], str(cert_path), str(key_path), mode=getattr(ua.MessageSecurityMode, choice.mode)
    )
    return choice
