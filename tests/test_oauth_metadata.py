"""The OAuth discovery documents (leafpds.oauth.metadata), field by field as the official PDS publishes them."""

from leafpds.oauth.metadata import authorization_server, protected_resource


def test_protected_resource_document():
    assert protected_resource("https://pds.example.com/") == {
        "resource": "https://pds.example.com",
        "authorization_servers": ["https://pds.example.com"],
        "scopes_supported": [],
        "bearer_methods_supported": ["header"],
    }


def test_authorization_server_metadata_has_what_the_official_client_demands():
    doc = authorization_server("https://pds.example.com/")
    origin = "https://pds.example.com"
    assert doc["issuer"] == origin
    assert doc["authorization_endpoint"] == origin + "/oauth/authorize"
    assert doc["token_endpoint"] == origin + "/oauth/token"
    assert doc["pushed_authorization_request_endpoint"] == origin + "/oauth/par"
    assert doc["revocation_endpoint"] == origin + "/oauth/revoke"
    assert doc["jwks_uri"] == origin + "/oauth/jwks"
    assert doc["require_pushed_authorization_requests"] is True
    assert doc["client_id_metadata_document_supported"] is True
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["scopes_supported"] == ["atproto", "transition:email", "transition:generic", "transition:chat.bsky"]
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["token_endpoint_auth_methods_supported"] == ["none", "private_key_jwt"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["ES256"]
    assert doc["dpop_signing_alg_values_supported"] == ["ES256"]
    assert doc["protected_resources"] == [origin]
