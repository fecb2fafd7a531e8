//! The TLS side of `[check]` (HAProxy's `check-ssl`, `verify`, `ca-file`, `crt`, `sni`): the
//! PEM files read and parsed, and the rustls client configuration built from them, once per load
//! or reload of the configuration. A file that cannot be read or holds no usable PEM is a
//! configuration error naming the key and the file, never a check failure found later.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::sections::Check;
use super::validate::KeyError;
use super::values::Verify;

/// What a TLS check needs, built from `[check]` at validation: the client configuration, shared
/// by every checker, and the name to verify when `check.sni` is set.
#[derive(Clone)]
pub struct CheckTls {
    pub client: Arc<ClientConfig>,
    /// `check.sni`; `None`: each server's check address, as an IP address.
    pub sni: Option<ServerName<'static>>,
    /// SHA-256 over the settings and the bytes of every file read: two loads are equal when they
    /// would behave the same, so a reload can tell a re-issued certificate from an unchanged one.
    digest: [u8; 32],
}

impl CheckTls {
    /// The name to send and verify when checking `target`.
    pub fn server_name(&self, target: std::net::IpAddr) -> ServerName<'static> {
        self.sni
            .clone()
            .unwrap_or(ServerName::IpAddress(target.into()))
    }
}

impl PartialEq for CheckTls {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl fmt::Debug for CheckTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckTls")
            .field("sni", &self.sni)
            .field("digest", &hex(&self.digest))
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn err(key: &str, message: String) -> KeyError {
    KeyError {
        key: key.into(),
        message,
    }
}

/// Reads the files `check` names and builds the client configuration; `None` when `check.ssl` is
/// off. Every combination that cannot work is refused here, naming the key.
pub fn load(check: &Check) -> Result<Option<CheckTls>, KeyError> {
    if !check.ssl {
        // A TLS key without `ssl` is a half-done setup: refuse it rather than check in plain HTTP.
        let set = [
            ("check.ca_file", check.ca_file.is_some()),
            ("check.crt", check.crt.is_some()),
            ("check.key", check.key.is_some()),
            ("check.sni", check.sni.is_some()),
            ("check.verify", check.verify != Verify::default()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
            return Err(err(
                key,
                "set but `check.ssl` is off: add `ssl = true` to [check] to check over TLS, or \
                 remove it"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let mut digest = Sha256::new();
    digest.update(check.verify.as_str());
    digest.update([0]);
    digest.update(check.sni.as_deref().unwrap_or_default());
    digest.update([0]);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("check.ssl", format!("cannot set up TLS: {e}")))?;
    let builder = match (check.verify, &check.ca_file) {
        (Verify::Required, None) => {
            return Err(err(
                "check.ca_file",
                "missing: `verify = \"required\"` (the default) verifies the REST server's \
                 certificate against a CA file; give the PEM file of the CA that signed Patroni's \
                 `restapi.certfile`, or set `verify = \"none\"` to accept any certificate"
                    .into(),
            ))
        }
        (Verify::None, Some(_)) => {
            return Err(err(
                "check.ca_file",
                "not used with `verify = \"none\"`: remove it, or set `verify = \"required\"`"
                    .into(),
            ))
        }
        (Verify::Required, Some(path)) => {
            let roots = roots("check.ca_file", path, &mut digest)?;
            builder.with_root_certificates(roots)
        }
        (Verify::None, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
    };
    let client = match (&check.crt, &check.key) {
        (None, None) => builder.with_no_client_auth(),
        (None, Some(_)) => {
            return Err(err(
                "check.key",
                "set without `check.crt`: give the client certificate in `crt` too".into(),
            ))
        }
        (Some(crt), key) => {
            let (chain, key) = client_identity(crt, key.as_deref(), &mut digest)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                err(
                    if check.key.is_some() {
                        "check.key"
                    } else {
                        "check.crt"
                    },
                    format!("the private key does not fit the certificate: {e}"),
                )
            })?
        }
    };
    let sni = match &check.sni {
        None => None,
        Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
            err(
                "check.sni",
                format!("invalid name {name:?}: give a DNS name or an IP address"),
            )
        })?),
    };
    Ok(Some(CheckTls {
        client: Arc::new(client),
        sni,
        digest: digest.finalize().into(),
    }))
}

/// Reads `path` for `key`, adding its bytes to the digest.
pub(super) fn read(key: &str, path: &Path, digest: &mut Sha256) -> Result<Vec<u8>, KeyError> {
    let bytes = std::fs::read(path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
    digest.update(path.as_os_str().as_encoded_bytes());
    digest.update([0]);
    digest.update(&bytes);
    Ok(bytes)
}

/// The CA certificates of the file `key` names: at least one, each a valid X.509 certificate.
pub(super) fn roots(
    key: &str,
    path: &Path,
    digest: &mut Sha256,
) -> Result<RootCertStore, KeyError> {
    let pem = read(key, path, digest)?;
    let certs = certificates(key, path, &pem)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            err(
                key,
                format!(
                    "certificate {} in {} is not a usable CA certificate: {e}",
                    i + 1,
                    path.display()
                ),
            )
        })?;
    }
    Ok(roots)
}

/// The `CERTIFICATE` blocks of a PEM file; none is an error.
fn certificates(
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, format!("invalid PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(
            key,
            format!(
                "no certificate in {}: expected PEM blocks `-----BEGIN CERTIFICATE-----`",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The client certificate chain of `crt` and its key, from `key` or else from `crt` itself.
fn client_identity(
    crt: &Path,
    key: Option<&Path>,
    digest: &mut Sha256,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
    let crt_pem = read("check.crt", crt, digest)?;
    let chain = certificates("check.crt", crt, &crt_pem)?;
    let (key_name, key_path, key_pem) = match key {
        Some(path) => ("check.key", path, read("check.key", path, digest)?),
        None => ("check.crt", crt, crt_pem),
    };
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let hint = if key.is_some() {
            ""
        } else {
            ": append the key to the certificate file, or give it in `check.key`"
        };
        match e {
            rustls::pki_types::pem::Error::NoItemsFound => err(
                key_name,
                format!("no private key in {}{hint}", key_path.display()),
            ),
            e => err(
                key_name,
                format!("invalid private key in {}: {e}", key_path.display()),
            ),
        }
    })?;
    Ok((chain, private))
}

/// `verify = "none"`: any certificate, any name. The handshake's signatures are still checked, so
/// the peer holds the key of the certificate it sent, whatever that certificate is.
#[derive(Debug)]
pub(super) struct AcceptAny(pub(super) Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SERVER: &str = "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n";

    fn load_toml(check: &str) -> Result<Config, String> {
        Config::from_toml(&format!("[check]\nssl = true\n{check}\n{SERVER}"))
            .map_err(|e| e.to_string())
    }

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn leaf() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.11".to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn garbage_in_a_pem_file_is_an_error_naming_the_key_and_the_file() {
        // "Files are read and parsed at config validation": a bad file never reaches a check.
        let dir = tempfile::tempdir().unwrap();
        let garbage = file(&dir, "ca.pem", "this is not PEM\n");
        let e = load_toml(&format!("ca_file = {garbage:?}")).unwrap_err();
        assert!(
            e.contains("`check.ca_file`")
                && e.contains("no certificate in")
                && e.contains(&garbage),
            "{e}"
        );
        let broken = file(
            &dir,
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let e = load_toml(&format!("ca_file = {broken:?}")).unwrap_err();
        assert!(e.contains("`check.ca_file`") && e.contains(&broken), "{e}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_in_crt_or_key() {
        // HAProxy `crt`: the key may follow the certificate in the same file.
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = leaf();
        let crt = file(&dir, "client.crt", &cert);
        let e = load_toml(&format!("verify = \"none\"\ncrt = {crt:?}")).unwrap_err();
        assert!(
            e.contains("`check.crt`") && e.contains("no private key") && e.contains("check.key"),
            "{e}"
        );
        let key_file = file(&dir, "client.key", &key);
        load_toml(&format!(
            "verify = \"none\"\ncrt = {crt:?}\nkey = {key_file:?}"
        ))
        .unwrap();
        let both = file(&dir, "client.pem", &format!("{cert}{key}"));
        load_toml(&format!("verify = \"none\"\ncrt = {both:?}")).unwrap();
        // Another certificate's key does not fit.
        let (_, other_key) = leaf();
        let other = file(&dir, "other.key", &other_key);
        let e = load_toml(&format!(
            "verify = \"none\"\ncrt = {crt:?}\nkey = {other:?}"
        ))
        .unwrap_err();
        assert!(
            e.contains("`check.key`") && e.contains("does not fit"),
            "{e}"
        );
    }

    #[test]
    fn a_reload_tells_a_renewed_file_from_an_unchanged_one() {
        // Same keys, new contents: the loads differ, so the check is rebuilt from the new file.
        let dir = tempfile::tempdir().unwrap();
        let ca = file(&dir, "ca.pem", &leaf().0);
        let text = format!("ca_file = {ca:?}");
        let (first, again) = (load_toml(&text).unwrap(), load_toml(&text).unwrap());
        assert_eq!(first.check_tls(), again.check_tls());
        file(&dir, "ca.pem", &leaf().0);
        let renewed = load_toml(&text).unwrap();
        assert_ne!(first.check_tls(), renewed.check_tls());
        let plan = crate::reload::plan::plan(&first, &renewed);
        assert!(plan.applies_live(), "{plan:?}");
        assert_eq!(plan.live, ["check TLS files (contents)"]);
    }

    #[test]
    fn check_prints_the_tls_settings() {
        let dir = tempfile::tempdir().unwrap();
        let ca = file(&dir, "ca.pem", &leaf().0);
        let c = load_toml(&format!("ca_file = {ca:?}\nsni = \"patroni\"")).unwrap();
        let shown = c.to_string();
        let line =
            format!("check over TLS: verify required (ca-file {ca}, name patroni), client certificate none\n");
        assert!(shown.contains(&line), "{line:?} not in:\n{shown}");
        let plain = Config::from_toml(SERVER).unwrap();
        assert!(plain.check_tls().is_none());
        assert!(!plain.to_string().contains("TLS"));
    }
}
