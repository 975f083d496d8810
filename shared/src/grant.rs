//! Start grants and confirmations.
//!
//! A **start grant** is a short-lived, single-use HS256 JWT with which the platform
//! authorises one start link: for one connection (by id and display name), one origin and one
//! of its users. Only the platform holds `START_LINK_KEY`, so only it can send a browser into
//! the flow for a given connection.
//!
//! A grant alone is a bearer capability: whoever opens the link would attach *their*
//! Microsoft account to the grant's connection. So opening it shows who and what is being
//! connected and waits for the person at the browser to confirm. The confirm form carries a
//! **confirmation** (signed with the same key under another audience) bound to a nonce held
//! only in that browser's cookie, so another site cannot post it for them.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::{ConnectionId, Origin};

/// The `aud` claim of every start grant.
pub const GRANT_AUDIENCE: &str = "autokitteh-oauth-start:microsoft";
/// The `aud` claim of every confirmation (never accepted as a grant, nor the other way).
pub const CONFIRM_AUDIENCE: &str = "autokitteh-oauth-confirm:microsoft";
/// The lifetime of a grant unless the platform asks for another, in seconds.
pub const DEFAULT_GRANT_LIFETIME_SECS: i64 = 60;
/// The longest lifetime a grant may claim, in seconds.
pub const MAX_GRANT_LIFETIME_SECS: i64 = 600;
/// Tolerated clock difference between the platform and the functions, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 30;
/// Shortest accepted signing key, in bytes (HS256 wants at least its output size).
pub const MIN_KEY_LEN: usize = 32;
/// Longest grant or confirmation we read; ours are about 400 characters.
pub const MAX_GRANT_LEN: usize = 2048;
/// Longest platform user (`sub`) and connection display name (`name`), in characters.
pub const MAX_LABEL_LEN: usize = 200;
/// Shortest and longest grant id (`jti`).
pub const GRANT_ID_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// The claims of a start grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    pub aud: String,
    pub cid: String,
    pub origin: String,
    /// The platform user the link was issued to.
    pub sub: String,
    /// The connection's display name, shown before the user confirms.
    pub name: String,
    /// The grant's id: each is accepted once.
    pub jti: String,
    /// Issued at, epoch seconds.
    pub iat: i64,
    /// Expires at, epoch seconds.
    pub exp: i64,
}

/// What one start link is for, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartGrant {
    pub cid: ConnectionId,
    pub origin: Origin,
    pub user: String,
    pub connection_name: String,
    /// Unique per grant (128 random bits unless the platform brings its own).
    pub id: String,
    pub lifetime_secs: i64,
}

impl StartGrant {
    /// A grant with a fresh random id and the default lifetime.
    pub fn new(
        cid: ConnectionId,
        origin: Origin,
        user: impl Into<String>,
        connection_name: impl Into<String>,
    ) -> Result<Self, crate::state::RandomError> {
        Ok(Self {
            cid,
            origin,
            user: user.into(),
            connection_name: connection_name.into(),
            id: crate::state::attempt_id()?,
            lifetime_secs: DEFAULT_GRANT_LIFETIME_SECS,
        })
    }
}

/// The claims of a confirmation: what the interstitial showed, for the browser it showed it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub aud: String,
    pub cid: String,
    pub origin: String,
    pub sub: String,
    pub name: String,
    /// Hex SHA-256 of the nonce in the confirming browser's cookie.
    pub nh: String,
    /// The id of the grant it confirms: spent when the confirmation is posted, so opening
    /// the link (a mail scanner's fetch) spends nothing and only one post can ever win.
    pub jti: String,
    /// What it confirms: `None` a sign-in; `Some(tenant)` an administrator's consent, in
    /// that tenant (empty: the app's own, or the administrator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<String>,
    pub iat: i64,
    /// Never after the grant's own end (with the skew): the spent-grant record lasts that
    /// long, so a confirmation cannot outlive it.
    pub exp: i64,
}

/// Why a grant or a confirmation was refused. Shown to the user in general terms only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the start link has no grant")]
    Missing,
    #[error("the start grant is malformed or its signature is wrong")]
    Invalid,
    #[error("the start grant expired")]
    Expired,
    #[error("the start grant claims a lifetime longer than allowed")]
    TooLong,
    #[error("the start grant was issued for another connection or origin")]
    Mismatch,
    #[error("the start grant was already used")]
    Used,
    #[error("the confirmation is missing, malformed or its signature is wrong")]
    ConfirmationInvalid,
    #[error("the confirmation expired")]
    ConfirmationExpired,
    #[error("the confirmation was sent without the cookie of the browser it was shown in")]
    OtherBrowser,
    #[error("the confirmation was posted from another site")]
    CrossSite,
}

/// The key start grants and confirmations are signed with.
#[derive(Clone)]
pub struct GrantKey(SecretString);

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantKey([redacted])")
    }
}

/// A start-link key shorter than [`MIN_KEY_LEN`].
#[derive(Debug, thiserror::Error)]
#[error("the start-link key must be at least {MIN_KEY_LEN} bytes long")]
pub struct WeakKey;

/// A label the platform chose (user, connection name): shown on a page, so it must be
/// printable text of a sensible length.
pub fn is_label(s: &str) -> bool {
    let len = s.chars().count();
    (1..=MAX_LABEL_LEN).contains(&len) && !s.chars().any(char::is_control) && !s.trim().is_empty()
}

fn is_grant_id(s: &str) -> bool {
    GRANT_ID_LEN.contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

impl GrantKey {
    pub fn new(secret: SecretString) -> Result<Self, WeakKey> {
        if secret.expose_secret().len() < MIN_KEY_LEN {
            return Err(WeakKey);
        }
        Ok(Self(secret))
    }

    fn encode<T: Serialize>(&self, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(self.0.expose_secret().as_bytes()),
        )
    }

    /// The claims of `token` if it is an HS256 JWT signed with this key for `audience`;
    /// times are left to the caller (checked against our own clock).
    fn decode<T: DeserializeOwned>(&self, token: &str, audience: &str) -> Option<T> {
        if token.len() > MAX_GRANT_LEN {
            return None;
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.validate_exp = false;
        jsonwebtoken::decode::<T>(
            token,
            &DecodingKey::from_secret(self.0.expose_secret().as_bytes()),
            &validation,
        )
        .ok()
        .map(|data| data.claims)
    }

    /// Signs `grant`, valid from `now` for its lifetime (at most [`MAX_GRANT_LIFETIME_SECS`]).
    pub fn sign(
        &self,
        grant: &StartGrant,
        now: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.encode(&GrantClaims {
            aud: GRANT_AUDIENCE.to_owned(),
            cid: grant.cid.to_string(),
            origin: grant.origin.to_string(),
            sub: grant.user.clone(),
            name: grant.connection_name.clone(),
            jti: grant.id.clone(),
            iat: now,
            exp: now + grant.lifetime_secs.min(MAX_GRANT_LIFETIME_SECS),
        })
    }

    /// Checks that `grant` was signed with this key for exactly `cid` and `origin`, names a
    /// user, a connection and an id, and is valid at `now`. Whether it was used before is
    /// the store's to say.
    pub fn verify(
        &self,
        grant: &str,
        cid: &ConnectionId,
        origin: Origin,
        now: i64,
    ) -> Result<GrantClaims, GrantError> {
        if grant.is_empty() {
            return Err(GrantError::Missing);
        }
        let claims: GrantClaims = self.decode(grant, GRANT_AUDIENCE).ok_or(GrantError::Invalid)?;
        if !is_label(&claims.sub) || !is_label(&claims.name) || !is_grant_id(&claims.jti) {
            return Err(GrantError::Invalid);
        }
        // Saturating: times of any size, even validly signed, are refused, never an overflow.
        if claims.exp.saturating_add(CLOCK_SKEW_SECS) <= now {
            return Err(GrantError::Expired);
        }
        if claims.exp.saturating_sub(claims.iat) > MAX_GRANT_LIFETIME_SECS
            || claims.exp > now.saturating_add(MAX_GRANT_LIFETIME_SECS + CLOCK_SKEW_SECS)
        {
            return Err(GrantError::TooLong);
        }
        if claims.cid != cid.as_str() || claims.origin != origin.as_str() {
            return Err(GrantError::Mismatch);
        }
        Ok(claims)
    }

    /// Signs the confirmation for a verified `grant`, shown in the browser whose cookie nonce
    /// hashes to `nonce_hash`, valid from `now` for `lifetime_secs`.
    pub fn sign_confirmation(
        &self,
        grant: &GrantClaims,
        nonce_hash: &str,
        consent: Option<String>,
        now: i64,
        lifetime_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.encode(&Confirmation {
            aud: CONFIRM_AUDIENCE.to_owned(),
            cid: grant.cid.clone(),
            origin: grant.origin.clone(),
            sub: grant.sub.clone(),
            name: grant.name.clone(),
            nh: nonce_hash.to_owned(),
            jti: grant.jti.clone(),
            consent,
            iat: now,
            exp: (now + lifetime_secs).min(grant.exp.saturating_add(CLOCK_SKEW_SECS)),
        })
    }

    /// Checks a confirmation posted back at `now`: signed with this key, unexpired, and well
    /// formed. Which browser may post it is checked by the caller against `nh`.
    pub fn verify_confirmation(&self, ticket: &str, now: i64) -> Result<Confirmation, GrantError> {
        let claims: Confirmation =
            self.decode(ticket, CONFIRM_AUDIENCE).ok_or(GrantError::ConfirmationInvalid)?;
        let well_formed = claims.cid.parse::<ConnectionId>().is_ok()
            && claims.origin.parse::<Origin>().is_ok()
            && is_label(&claims.sub)
            && is_label(&claims.name)
            && claims.nh.len() == 64
            && is_grant_id(&claims.jti)
            && claims.consent.as_deref().is_none_or(|t| t.len() <= 256);
        if !well_formed {
            return Err(GrantError::ConfirmationInvalid);
        }
        if claims.exp <= now {
            return Err(GrantError::ConfirmationExpired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key() -> GrantKey {
        GrantKey::new(SecretString::from("k".repeat(32))).unwrap()
    }

    fn cid() -> ConnectionId {
        "con_01h9x3k6rtv2d9yb3pfcw6qz7m".parse().unwrap()
    }

    fn grant(origin: Origin, lifetime_secs: i64) -> StartGrant {
        StartGrant {
            lifetime_secs,
            ..StartGrant::new(cid(), origin, "ada@example.com", "Ada's mailbox").unwrap()
        }
    }

    fn raw(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret("k".repeat(32).as_bytes()),
        )
        .unwrap()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({
            "aud": GRANT_AUDIENCE, "cid": cid().to_string(), "origin": "web",
            "sub": "ada@example.com", "name": "Ada's mailbox", "jti": "0123456789abcdef",
            "iat": NOW, "exp": NOW + 60,
        })
    }

    #[test]
    fn a_signed_grant_verifies_and_names_user_connection_and_id() {
        let new = grant(Origin::Web, 300);
        let token = key().sign(&new, NOW).unwrap();
        let claims = key().verify(&token, &cid(), Origin::Web, NOW + 299).unwrap();
        assert_eq!(claims.aud, GRANT_AUDIENCE);
        assert_eq!(claims.exp, NOW + 300);
        assert_eq!(claims.sub, "ada@example.com");
        assert_eq!(claims.name, "Ada's mailbox");
        assert_eq!(claims.jti, new.id);
        assert_eq!(claims.jti.len(), 32);
    }

    #[test]
    fn grants_last_a_minute_unless_asked_and_ids_differ() {
        let a = StartGrant::new(cid(), Origin::Web, "u", "n").unwrap();
        let b = StartGrant::new(cid(), Origin::Web, "u", "n").unwrap();
        assert_eq!(a.lifetime_secs, DEFAULT_GRANT_LIFETIME_SECS);
        assert_eq!(DEFAULT_GRANT_LIFETIME_SECS, 60);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn grants_bind_connection_and_origin() {
        let token = key().sign(&grant(Origin::Web, 300), NOW).unwrap();
        let other: ConnectionId = "con_01h9x3k6rtv2d9yb3pfcw6qz7n".parse().unwrap();
        assert_eq!(key().verify(&token, &other, Origin::Web, NOW), Err(GrantError::Mismatch));
        assert_eq!(key().verify(&token, &cid(), Origin::Cli, NOW), Err(GrantError::Mismatch));
    }

    #[test]
    fn expired_forged_and_overlong_grants_are_refused() {
        let token = key().sign(&grant(Origin::Web, 300), NOW).unwrap();
        assert_eq!(
            key().verify(&token, &cid(), Origin::Web, NOW + 300 + CLOCK_SKEW_SECS),
            Err(GrantError::Expired)
        );
        let other_key = GrantKey::new(SecretString::from("x".repeat(32))).unwrap();
        assert_eq!(other_key.verify(&token, &cid(), Origin::Web, NOW), Err(GrantError::Invalid));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() / 2, 'A');
        assert_eq!(key().verify(&tampered, &cid(), Origin::Web, NOW), Err(GrantError::Invalid));
        assert_eq!(key().verify("", &cid(), Origin::Web, NOW), Err(GrantError::Missing));
        assert_eq!(
            key().verify(&"a".repeat(5000), &cid(), Origin::Web, NOW),
            Err(GrantError::Invalid)
        );

        // Signing caps the lifetime; a platform minting its own cannot exceed it either.
        let capped = key().sign(&grant(Origin::Web, 3600), NOW).unwrap();
        let verified = key().verify(&capped, &cid(), Origin::Web, NOW).unwrap();
        assert_eq!(verified.exp - verified.iat, MAX_GRANT_LIFETIME_SECS);
        let mut long = claims();
        long["exp"] = (NOW + 3600).into();
        assert_eq!(key().verify(&raw(&long), &cid(), Origin::Web, NOW), Err(GrantError::TooLong));
    }

    #[test]
    fn grants_without_a_user_a_name_or_a_sound_id_are_refused() {
        assert!(key().verify(&raw(&claims()), &cid(), Origin::Web, NOW).is_ok());
        for (claim, value) in [
            ("sub", serde_json::Value::Null),
            ("sub", "".into()),
            ("sub", "   ".into()),
            ("sub", "ada\n<script>".into()),
            ("sub", "x".repeat(MAX_LABEL_LEN + 1).into()),
            ("name", serde_json::Value::Null),
            ("name", "\u{7}bell".into()),
            ("jti", serde_json::Value::Null),
            ("jti", "short".into()),
            ("jti", "0123456789abcdef/..".into()),
            ("jti", "a".repeat(129).into()),
        ] {
            let mut c = claims();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(claim);
            } else {
                c[claim] = value.clone();
            }
            assert_eq!(
                key().verify(&raw(&c), &cid(), Origin::Web, NOW),
                Err(GrantError::Invalid),
                "{claim} = {value}"
            );
        }
        // Labels may be any printable text, within the length.
        let mut c = claims();
        c["name"] = "Équipe « Ventes » — boîte partagée".into();
        c["sub"] = "x".repeat(MAX_LABEL_LEN).into();
        assert!(key().verify(&raw(&c), &cid(), Origin::Web, NOW).is_ok());
    }

    #[test]
    fn algorithm_none_and_other_audiences_are_refused() {
        let header = URL_SAFE.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE.encode(claims().to_string().as_bytes());
        let none = format!("{header}.{body}.");
        assert_eq!(key().verify(&none, &cid(), Origin::Web, NOW), Err(GrantError::Invalid));

        let mut wrong_aud = claims();
        wrong_aud["aud"] = "something-else".into();
        assert_eq!(
            key().verify(&raw(&wrong_aud), &cid(), Origin::Web, NOW),
            Err(GrantError::Invalid)
        );
    }

    #[test]
    fn confirmations_and_grants_are_not_interchangeable() {
        let token = key().sign(&grant(Origin::Web, 60), NOW).unwrap();
        let claims = key().verify(&token, &cid(), Origin::Web, NOW).unwrap();
        let ticket = key().sign_confirmation(&claims, &"a".repeat(64), None, NOW, 600).unwrap();
        assert_eq!(key().verify(&ticket, &cid(), Origin::Web, NOW), Err(GrantError::Invalid));
        assert_eq!(key().verify_confirmation(&token, NOW), Err(GrantError::ConfirmationInvalid));
    }

    #[test]
    fn a_confirmation_carries_what_was_shown_until_it_expires() {
        let token = key().sign(&grant(Origin::Cli, 60), NOW).unwrap();
        let claims = key().verify(&token, &cid(), Origin::Cli, NOW).unwrap();
        let ticket = key().sign_confirmation(&claims, &"b".repeat(64), None, NOW, 600).unwrap();
        // It ends with its grant (60 s, plus the skew), before its own 600 s.
        let confirmed = key().verify_confirmation(&ticket, NOW + 60 + CLOCK_SKEW_SECS - 1).unwrap();
        assert_eq!(confirmed.jti, claims.jti);
        assert_eq!(confirmed.consent, None);
        assert_eq!(confirmed.cid, cid().as_str());
        assert_eq!(confirmed.origin, "cli");
        assert_eq!(confirmed.sub, "ada@example.com");
        assert_eq!(confirmed.name, "Ada's mailbox");
        assert_eq!(confirmed.nh, "b".repeat(64));
        assert_eq!(
            key().verify_confirmation(&ticket, NOW + 60 + CLOCK_SKEW_SECS),
            Err(GrantError::ConfirmationExpired)
        );
        // A long grant: the confirmation's own lifetime ends it; a consent says its tenant.
        let long = key().sign(&grant(Origin::Cli, 600), NOW).unwrap();
        let long = key().verify(&long, &cid(), Origin::Cli, NOW).unwrap();
        let ticket = key()
            .sign_confirmation(&long, &"b".repeat(64), Some("contoso.com".into()), NOW, 300)
            .unwrap();
        assert_eq!(
            key().verify_confirmation(&ticket, NOW + 299).unwrap().consent.as_deref(),
            Some("contoso.com")
        );
        assert_eq!(
            key().verify_confirmation(&ticket, NOW + 300),
            Err(GrantError::ConfirmationExpired)
        );
        let other_key = GrantKey::new(SecretString::from("x".repeat(32))).unwrap();
        assert_eq!(
            other_key.verify_confirmation(&ticket, NOW),
            Err(GrantError::ConfirmationInvalid)
        );
        let short = key().sign_confirmation(&claims, "b", None, NOW, 600).unwrap();
        assert_eq!(key().verify_confirmation(&short, NOW), Err(GrantError::ConfirmationInvalid));
        assert_eq!(key().verify_confirmation("", NOW), Err(GrantError::ConfirmationInvalid));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(GrantKey::new(SecretString::from("short")).is_err());
    }

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as URL_SAFE;
}
