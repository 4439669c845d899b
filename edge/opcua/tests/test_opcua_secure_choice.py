"""security: auto's choice among a server's endpoints (pure)."""

from __future__ import annotations

import pytest
from asyncua import ua

from plantstream.edge.opcua.secure import Choice, NoUsableEndpoint, choose

URI = "http://opcfoundation.org/UA/SecurityPolicy#"
M = ua.MessageSecurityMode


def ep(policy: str, mode: ua.MessageSecurityMode, *tokens: ua.UserTokenType) -> ua.EndpointDescription:
    e = ua.EndpointDescription()
    e.SecurityPolicyUri = URI + policy
    e.SecurityMode = mode
    e.UserIdentityTokens = [ua.UserTokenPolicy(TokenType=t) for t in tokens]
    return e


ANON, USER = ua.UserTokenType.Anonymous, ua.UserTokenType.UserName


def test_strongest_mode_then_policy() -> None:
    eps = [
        ep("None", M.None_, ANON, USER),
        ep("Basic256Sha256", M.SignAndEncrypt, ANON, USER),
        ep("Aes256_Sha256_RsaPss", M.Sign, ANON, USER),
        ep("Aes128_Sha256_RsaOaep", M.SignAndEncrypt, ANON, USER),
        ep("Basic256", M.SignAndEncrypt, ANON, USER),  # deprecated: never chosen
    ]
    assert choose(eps, username=False) == Choice("Aes128_Sha256_RsaOaep", "SignAndEncrypt")
    assert str(choose(eps[:3], username=True)) == "Basic256Sha256/SignAndEncrypt"


def test_the_identity_decides_which_endpoints_count() -> None:
    eps = [ep("None", M.None_, ANON), ep("Aes256_Sha256_RsaPss", M.SignAndEncrypt, USER)]
    assert choose(eps, username=True) == Choice("Aes256_Sha256_RsaPss", "SignAndEncrypt")
    # Anonymous is accepted only without security here: None, the only choice (the caller warns).
    assert choose(eps, username=False) == Choice("None", "None")


def test_nothing_usable_names_what_was_offered() -> None:
    eps = [ep("Basic128Rsa15", M.Sign, ANON), ep("Aes256_Sha256_RsaPss", M.Sign, USER)]
    with pytest.raises(
        NoUsableEndpoint, match=r"anonymous identity.*offered: Basic128Rsa15/Sign, Aes256_Sha256_RsaPss/Sign"
    ):
        choose(eps, username=False)
    with pytest.raises(NoUsableEndpoint, match="offered: none"):
        choose([], username=True)
