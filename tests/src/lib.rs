//! Test support for the Microsoft OAuth functions: a strict stand-in identity platform, an
//! AWS emulator launcher with resource set-up, and a local server running the real handlers
//! behind API Gateway events.

pub mod autokitteh;
pub mod aws;
pub mod chaos;
pub mod deploy;
pub mod frontdoor;
pub mod iam;
pub mod load;
pub mod local;
pub mod recorder;
pub mod standin;
pub mod startlink;
pub mod sts;

use ms_oauth::domain::ConnectionId;

/// `n` random characters from the OS generator, in the alphabet of connection ids.
pub fn random_base32(n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bytes = vec![0u8; n];
    if getrandom::fill(&mut bytes).is_err() {
        unreachable!("the OS random generator failed");
    }
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// A fresh random AutoKitteh connection id.
pub fn new_connection_id() -> ConnectionId {
    let id = format!("con_{}", random_base32(26));
    id.parse().unwrap_or_else(|_| unreachable!("{id} has the documented shape"))
}
