//! Certificates and keys for one control plane, generated with rcgen: a CA, the apiserver's
//! serving certificate, an admin client certificate (`O=system:masters`) and the
//! service-account token signing key pair. Fresh for every start; nothing is reused.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Errors generating or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating the {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("writing {path}: {source}; check the state directory is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Paths of the generated PEM files.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// Public half of the service-account signing key (`--service-account-key-file`).
    pub sa_public_key: PathBuf,
    /// `--service-account-signing-key-file` and kube-controller-manager's
    /// `--service-account-private-key-file`.
    pub sa_private_key: PathBuf,
}

/// The apiserver serving certificate's names: loopback and the in-cluster service names.
const SERVING_DNS_NAMES: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

impl Pki {
    /// Generates everything into `dir` (created if needed; keys are written mode 0600).
    ///
    /// # Errors
    /// [`Error::Generate`] if rcgen fails, [`Error::Write`] if a file cannot be written.
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let keypair = |what| {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|source| Error::Generate { what, source })
        };

        let ca_key = keypair("CA key")?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("localcp-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|source| Error::Generate {
                what: "CA certificate",
                source,
            })?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let serving_key = keypair("serving key")?;
        let mut serving = CertificateParams::default();
        serving.distinguished_name = name("kube-apiserver", None);
        serving.subject_alt_names = SERVING_DNS_NAMES
            .iter()
            .map(|n| SanType::DnsName((*n).try_into().expect("static DNS names are valid")))
            .chain([
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
            ])
            .collect();
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert =
            serving
                .signed_by(&serving_key, &issuer)
                .map_err(|source| Error::Generate {
                    what: "serving certificate",
                    source,
                })?;

        let admin_key = keypair("admin key")?;
        let mut admin = CertificateParams::default();
        admin.distinguished_name = name("localcp-admin", Some("system:masters"));
        admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert =
            admin
                .signed_by(&admin_key, &issuer)
                .map_err(|source| Error::Generate {
                    what: "admin client certificate",
                    source,
                })?;

        let sa_key = keypair("service-account signing key")?;

        let pki = Self {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_public_key: dir.join("sa.pub"),
            sa_private_key: dir.join("sa.key"),
        };
        write(&pki.ca_cert, &ca_cert.pem(), false)?;
        write(&pki.serving_cert, &serving_cert.pem(), false)?;
        write(&pki.serving_key, &serving_key.serialize_pem(), true)?;
        write(&pki.admin_cert, &admin_cert.pem(), false)?;
        write(&pki.admin_key, &admin_key.serialize_pem(), true)?;
        write(&pki.sa_public_key, &sa_key.public_key_pem(), false)?;
        write(&pki.sa_private_key, &sa_key.serialize_pem(), true)?;
        Ok(pki)
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 });
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_pem_files_with_private_keys_readable_only_by_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("localcp-pki-{}", std::process::id()));
        let pki = Pki::generate(&dir).unwrap();
        for cert in [&pki.ca_cert, &pki.serving_cert, &pki.admin_cert] {
            let pem = std::fs::read_to_string(cert).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{cert:?}");
        }
        for key in [&pki.serving_key, &pki.admin_key, &pki.sa_private_key] {
            let pem = std::fs::read_to_string(key).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{key:?}");
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key:?}");
        }
        let public = std::fs::read_to_string(&pki.sa_public_key).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
