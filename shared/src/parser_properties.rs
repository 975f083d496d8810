//! Every parser that sees outside input, fed arbitrary input: none may panic, and what they
//! accept must be well-formed.

use proptest::prelude::*;
use secrecy::SecretString;

use crate::config::{Config, PublicAddress};
use crate::domain::{ConnectionId, Origin, Tenant};
use crate::grant::GrantKey;
use crate::microsoft::{MicrosoftError, MicrosoftTokenResponse, aadsts_code, read_id_token};

fn key() -> GrantKey {
    GrantKey::new(SecretString::from("k".repeat(32))).unwrap()
}

proptest! {
    // `PROPTEST_CASES` runs longer (see docs/benchmarks.md).
    #![proptest_config(ProptestConfig {
        cases: crate::testing::proptest_cases(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn connection_ids_accept_only_the_documented_shape(s in "\\PC{0,40}|con_[0-9a-z]{20,30}") {
        if let Ok(cid) = s.parse::<ConnectionId>() {
            prop_assert_eq!(cid.as_str().len(), 30);
            prop_assert!(cid.as_str().starts_with("con_"));
            prop_assert!(cid.as_str()[4..].bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        }
    }

    #[test]
    fn origins_and_tenants_never_panic(s in "\\PC{0,300}") {
        let _ = s.parse::<Origin>();
        if let Ok(t) = s.parse::<Tenant>() {
            prop_assert!(!t.as_str().contains('/') && !t.as_str().contains('?'));
        }
    }

    #[test]
    fn grants_of_any_shape_are_refused_without_panicking(s in "\\PC{0,600}|[A-Za-z0-9_-]{10,80}\\.[A-Za-z0-9_-]{10,200}\\.[A-Za-z0-9_-]{0,60}") {
        let cid: ConnectionId = "con_0123456789abcdefghjkmnpqrs".parse().unwrap();
        prop_assert!(key().verify(&s, &cid, Origin::Web, 1_800_000_000).is_err());
        prop_assert!(key().verify_confirmation(&s, 1_800_000_000).is_err());
    }

    #[test]
    fn id_tokens_of_any_shape_never_panic(header in "\\PC{0,60}", body in "\\PC{0,200}", sig in "\\PC{0,20}") {
        use base64::Engine as _;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let _ = read_id_token(&format!("{}.{}.{}", enc(&header), enc(&body), sig));
        let _ = read_id_token(&format!("{header}.{body}.{sig}"));
    }

    #[test]
    fn token_and_error_responses_of_any_shape_never_panic(body in "\\PC{0,400}") {
        let _ = serde_json::from_str::<MicrosoftTokenResponse>(&body);
        let _ = serde_json::from_str::<MicrosoftError>(&body);
        let _ = aadsts_code(&body);
        let _ = MicrosoftError::from_callback(&body, Some(&body));
    }

    #[test]
    fn configuration_values_never_panic(address in "\\PC{0,80}", url in "\\PC{0,80}", scopes in "\\PC{0,200}") {
        let _ = PublicAddress::parse(&address);
        let vars = [
            ("WEBHOOK_ADDRESS", address.as_str()),
            ("MICROSOFT_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
            ("OAUTH_TABLE_NAME", "t"),
            ("MICROSOFT_AUTHORITY_HOST", url.as_str()),
            ("MICROSOFT_SCOPES", scopes.as_str()),
        ];
        if let Ok(config) = Config::from_lookup(&|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())) {
            // Whatever was accepted yields absolute endpoint URLs on the configured tenant.
            prop_assert!(config.token_endpoint().url().path().ends_with("/oauth2/v2.0/token"));
            prop_assert!(config.redirect_url().url().path() == "/oauth/redirect/microsoft");
        }
    }
}
