//! Flow secrets: the `state` parameter, the PKCE pair and the browser-binding nonce.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth2::{CsrfToken, PkceCodeChallenge, PkceCodeVerifier};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of the browser-binding cookie; the rest of the name identifies the flow so that
/// several sign-ins can run in one browser at once. `__Secure-`: browsers take it only from
/// a secure origin, with `Secure` (the paths are narrow, so `__Host-`, which needs `Path=/`,
/// does not fit).
pub const COOKIE_PREFIX: &str = "__Secure-ms_oauth_";
/// Prefix of the confirm cookie set with the confirmation page.
pub const CONFIRM_COOKIE_PREFIX: &str = "__Secure-ms_oauth_confirm_";
/// Longest `state` value we accept from a callback (ours are 43 characters).
pub const MAX_STATE_LEN: usize = 128;

/// The OS random generator failed; nothing can be done safely without it.
#[derive(Debug, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

/// `n` bytes from the OS CSPRNG, base64url-encoded.
fn random_token(n: usize) -> Result<SecretString, RandomError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|_| RandomError)?;
    Ok(SecretString::from(URL_SAFE_NO_PAD.encode(&bytes)))
}

/// A fresh 256-bit nonce for a browser cookie (base64url).
pub fn random_nonce() -> Result<SecretString, RandomError> {
    random_token(32)
}

/// A random id (128 bits, hex) telling one attempt of an operation from any other. Not a
/// secret.
pub fn attempt_id() -> Result<String, RandomError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| RandomError)?;
    Ok(hex(&bytes))
}

/// Fresh secrets for one flow.
#[derive(Debug)]
pub struct FlowSecrets {
    /// The `state` sent to Microsoft (256 bits).
    pub state: CsrfToken,
    /// The PKCE verifier kept server-side (256 bits).
    pub pkce_verifier: PkceCodeVerifier,
    /// The S256 challenge sent to Microsoft.
    pub pkce_challenge: PkceCodeChallenge,
    /// The nonce held only in the browser's cookie (256 bits).
    pub browser_nonce: SecretString,
}

impl FlowSecrets {
    /// Draws every value from the OS CSPRNG.
    pub fn generate() -> Result<Self, RandomError> {
        let state = CsrfToken::new(random_token(32)?.expose_secret().to_owned());
        let pkce_verifier = PkceCodeVerifier::new(random_token(32)?.expose_secret().to_owned());
        let pkce_challenge = PkceCodeChallenge::from_code_verifier_sha256(&pkce_verifier);
        Ok(Self { state, pkce_verifier, pkce_challenge, browser_nonce: random_token(32)? })
    }
}

/// SHA-256 of a `state`: what the table is keyed by, so reading the table does not reveal a
/// usable state.
#[derive(Clone, PartialEq, Eq)]
pub struct StateKey([u8; 32]);

impl StateKey {
    pub fn from_state(state: &str) -> Self {
        Self(Sha256::digest(state.as_bytes()).into())
    }

    /// Lower-case hex of the hash.
    pub fn as_hex(&self) -> String {
        hex(&self.0)
    }

    /// The name of the browser-binding cookie for this flow. It is derived from the hash,
    /// never the state itself, so it reveals nothing usable.
    pub fn cookie_name(&self) -> String {
        format!("{COOKIE_PREFIX}{}", &self.as_hex()[..16])
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateKey({}…)", &self.as_hex()[..8])
    }
}

/// Hex SHA-256 of the browser nonce, as stored with the state.
pub fn browser_hash(nonce: &str) -> String {
    hex(&Sha256::digest(nonce.as_bytes()))
}

/// Compares two secrets without leaking where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_secrets_are_long_random_and_distinct() {
        let a = FlowSecrets::generate().unwrap();
        let b = FlowSecrets::generate().unwrap();
        assert_eq!(a.state.secret().len(), 43);
        assert_eq!(a.pkce_verifier.secret().len(), 43);
        assert_ne!(a.state.secret(), b.state.secret());
        assert_ne!(a.pkce_verifier.secret(), b.pkce_verifier.secret());
        assert_ne!(a.browser_nonce.expose_secret(), b.browser_nonce.expose_secret());
        assert_ne!(a.state.secret(), a.pkce_verifier.secret());
    }

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        let s = FlowSecrets::generate().unwrap();
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(s.pkce_verifier.secret().as_bytes()));
        assert_eq!(s.pkce_challenge.as_str(), expected);
        assert_eq!(s.pkce_challenge.method().as_str(), "S256");
    }

    #[test]
    fn state_key_hides_the_state() {
        let key = StateKey::from_state("abc");
        assert_eq!(
            key.as_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(key.cookie_name(), "__Secure-ms_oauth_ba7816bf8f01cfea");
        assert!(!format!("{key:?}").contains("abc"));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
