//! Test certificates: a fresh RSA key and a self-signed certificate for it, as PEM text an
//! Entra app would be given (certificate) and a connection would hold (certificate + key).

use rcgen::{CertificateParams, KeyPair, PKCS_RSA_SHA256};
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use time::OffsetDateTime;

/// A generated certificate.
#[derive(Debug, Clone)]
pub struct TestCertificate {
    /// The certificate alone (what the app registration gets).
    pub certificate_pem: String,
    /// The unencrypted PKCS#8 private key.
    pub key_pem: String,
}

impl TestCertificate {
    /// Certificate and key in one text, as `akoauth app set --certificate` reads it.
    pub fn bundle(&self) -> String {
        format!("{}{}", self.certificate_pem, self.key_pem)
    }
}

/// A 2048-bit RSA certificate for `subject`, valid from `not_before` to `not_after`.
///
/// # Panics
/// When key generation or signing fails (test code).
#[allow(clippy::expect_used)]
pub fn certificate(
    subject: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> TestCertificate {
    let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key generation");
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 encoding").to_string();
    let pair = KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem, &PKCS_RSA_SHA256)
        .expect("rcgen reads the key");
    let mut params = CertificateParams::new(vec![subject.to_owned()]).expect("certificate params");
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&pair).expect("self-signed certificate");
    TestCertificate { certificate_pem: cert.pem(), key_pem }
}

/// A certificate valid from a day ago for a year.
pub fn valid_certificate(subject: &str) -> TestCertificate {
    let now = OffsetDateTime::now_utc();
    certificate(subject, now - time::Duration::days(1), now + time::Duration::days(365))
}

/// A certificate that expired yesterday.
pub fn expired_certificate(subject: &str) -> TestCertificate {
    let now = OffsetDateTime::now_utc();
    certificate(subject, now - time::Duration::days(400), now - time::Duration::days(1))
}
