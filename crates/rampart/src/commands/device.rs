//! `rampart device ...`

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use rampart_pki::{IssuedCertificate, PkiError};
use rampart_proto::{ClaimCode, DeviceId};
use rampart_provisioning::claim::{self, ClaimRequest};
use rampart_provisioning::registration::{self, Registration};
use rampart_store::{Device, DeviceFilter, DeviceState, Owner, Store, StoreError};
use rand::RngCore;
use serde::Serialize;
use time::OffsetDateTime;

use crate::cli::{DeviceCommand, GlobalArgs, StateArg};
use crate::config::Config;
use crate::credentials::Credentials;
use crate::datadir::write_atomic;
use crate::output::say;
use crate::platform::{Platform, cli_actor};
use crate::{label, output};

/// `device list --json` element: the stable listing shape.
#[derive(Serialize)]
struct DeviceSummary<'a> {
    id: &'a DeviceId,
    state: DeviceState,
    fingerprint: &'a str,
    serial: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
    online: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    last_seen: Option<OffsetDateTime>,
}

impl<'a> From<&'a Device> for DeviceSummary<'a> {
    fn from(d: &'a Device) -> Self {
        Self {
            id: &d.id,
            state: d.state,
            fingerprint: &d.fingerprint,
            serial: &d.serial,
            not_after: d.not_after,
            online: d.online,
            last_seen: d.last_seen,
        }
    }
}

/// What `sign-csr` and `create` report about a new device.
#[derive(Serialize)]
struct Registered {
    id: DeviceId,
    /// The device certificate (PEM).
    certificate: String,
    /// Certificate followed by the issuing CA (PEM), for TLS stacks that send a chain.
    chain: String,
    fingerprint: String,
    serial: String,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
    claim_code: String,
    qr_payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Files>,
}

#[derive(Serialize)]
struct Files {
    key: String,
    certificate: String,
    ca: String,
}

/// Runs a device command.
pub async fn run(g: &GlobalArgs, config: Config, cmd: DeviceCommand) -> Result<ExitCode> {
    let p = Platform::open(&g.data_dir, config).await?;
    match cmd {
        DeviceCommand::SignCsr { file, id, out } => sign_csr(g, &p, &file, id.as_ref(), out).await,
        DeviceCommand::Create { id, out } => create(g, &p, &id, &out).await,
        DeviceCommand::Register { cert } => register_existing(g, &p, &cert).await,
        DeviceCommand::List { state, search } => list(g, &p, state, search).await,
        DeviceCommand::Show { id } => {
            let d = p.store.device(&id).await?.ok_or(StoreError::NotFound(id))?;
            show(g, &d)
        }
        DeviceCommand::Revoke { id, reason } => {
            let d = p.store.revoke_device(&id, reason, &cli_actor()).await?;
            p.publish_crl().await?;
            if !g.json {
                say!("revoked {} (serial {}, reason {reason})", d.id, d.serial);
            }
            show_json_only(g, &d)
        }
        DeviceCommand::Disable { id } => {
            let d = p.store.set_device_disabled(&id, true, &cli_actor()).await?;
            if !g.json {
                say!(
                    "disabled {}: it cannot connect until `rampart device enable {}`",
                    d.id,
                    d.id
                );
            }
            show_json_only(g, &d)
        }
        DeviceCommand::Enable { id } => {
            let d = p
                .store
                .set_device_disabled(&id, false, &cli_actor())
                .await?;
            if !g.json {
                say!("enabled {} (now {})", d.id, d.state);
            }
            show_json_only(g, &d)
        }
        DeviceCommand::Delete { id } => {
            p.store.delete_device(&id, &cli_actor()).await?;
            p.publish_crl().await?;
            if g.json {
                output::json(&serde_json::json!({ "id": id, "deleted": true }))?;
            } else {
                say!("deleted {id}; its certificate stays on the CRL");
            }
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Qr {
            id,
            rotate_claim_code,
            png,
            svg,
        } => qr(g, &p, &id, rotate_claim_code, png, svg).await,
        DeviceCommand::Claim {
            id,
            code,
            qr,
            owner,
            wait,
        } => {
            let request = match (qr, id, code) {
                (Some(qr), _, _) => ClaimRequest::from_qr(&qr, owner)?,
                (None, Some(device), Some(code)) => ClaimRequest {
                    code: ClaimCode::parse(&code)
                        .with_context(|| format!("wrong claim code for '{device}'"))?,
                    device,
                    fingerprint: None,
                    owner,
                },
                _ => bail!("give the device id and --code, or --qr with the label's content"),
            };
            claim(g, &p, &request, wait).await
        }
    }
}

/// `device claim --json`: where the claim stands.
#[derive(Serialize)]
struct ClaimReport<'a> {
    claim: u64,
    device: &'a DeviceId,
    owner: String,
    /// `pending` (without `--wait`) or `bound`.
    status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

async fn claim(
    g: &GlobalArgs,
    p: &Platform,
    request: &ClaimRequest,
    wait: Option<std::time::Duration>,
) -> Result<ExitCode> {
    let mut nonce = [0u8; claim::NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce);
    let actor = cli_actor();
    let started = claim::start(
        &p.store,
        request,
        &p.config.claim.policy(),
        nonce,
        OffsetDateTime::now_utc(),
        &actor,
    )
    .await?;
    let report = |status| ClaimReport {
        claim: started.id,
        device: &started.device,
        owner: started.owner.to_string(),
        status,
        expires_at: started.expires_at,
    };
    let Some(wait) = wait else {
        if g.json {
            output::json(&report("pending"))?;
        } else {
            say!(
                "claim {} of {} for {} sent: the device must confirm before {} (`rampart device show {}` shows the result)",
                started.id,
                started.device,
                started.owner,
                output::when(started.expires_at),
                started.device
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    // The running server sends the nonce; the device's answer binds it.
    let deadline = std::time::Instant::now() + wait;
    let every = p.config.serve.change_poll_interval;
    loop {
        if let Some(device) =
            claim::outcome(&p.store, started.id, OffsetDateTime::now_utc(), &actor).await?
        {
            if g.json {
                output::json(&report("bound"))?;
            } else {
                say!(
                    "{} is now bound to {}",
                    device.id,
                    device
                        .owner
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), Owner::to_string)
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "'{}' did not confirm the claim within {}; it stays pending until {} (is `rampart serve` running, and the device answering on devices/{}/bind/up?)",
                started.device,
                rampart_span::format(wait),
                output::when(started.expires_at),
                started.device
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// The report of a device just registered.
fn registered(reg: Registration) -> Registered {
    Registered {
        id: reg.device.id,
        certificate: reg.certificate.pem,
        chain: reg.chain,
        fingerprint: reg.device.fingerprint,
        serial: reg.device.serial,
        not_after: reg.device.not_after,
        claim_code: reg.claim_code.as_str().to_owned(),
        qr_payload: reg.qr_payload,
        files: None,
    }
}

/// Registers an issued certificate as a new `unbound` device.
async fn register(p: &Platform, cert: IssuedCertificate) -> Result<Registered> {
    let reg = registration::register(&p.store, &p.pki, cert, &cli_actor()).await?;
    Ok(registered(reg))
}

/// Refuses early, before any signing, when the id is taken.
async fn ensure_free(p: &Platform, id: &DeviceId) -> Result<()> {
    Ok(registration::ensure_free(&p.store, id).await?)
}

async fn sign_csr(
    g: &GlobalArgs,
    p: &Platform,
    file: &Path,
    id: Option<&DeviceId>,
    out: Option<PathBuf>,
) -> Result<ExitCode> {
    let csr = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the CSR from standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    // Every check before signing: no certificate exists for a refused id.
    let verified = p.pki.verify_device_csr(&csr)?;
    if let Some(expected) = id
        && expected != verified.id()
    {
        return Err(PkiError::CsrIdMismatch {
            expected: expected.to_string(),
            found: verified.id().to_string(),
        }
        .into());
    }
    ensure_free(p, verified.id()).await?;
    let cert = p.pki.sign_verified_csr(&verified)?;
    let reg = register(p, cert).await?;
    if let Some(out) = &out {
        write_atomic(out, reg.chain.as_bytes(), 0o644)?;
    }
    if g.json {
        output::json(&reg)?;
    } else {
        if out.is_none() {
            print!("{}", reg.chain);
        }
        print_claim(&reg);
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(g: &GlobalArgs, p: &Platform, id: &DeviceId, out: &Path) -> Result<ExitCode> {
    ensure_free(p, id).await?;
    eprintln!(
        "warning: the private key is being made on the server; production keys belong on the device (use `rampart device sign-csr`)"
    );
    let (cert, key) = p.pki.issue_device_with_generated_key(id)?;
    let files = Credentials::new(out, id.as_str());
    files.check_free()?;
    let mut reg = register(p, cert).await?;
    // Registered first, then written: if writing fails, the device is
    // deleted again so that no registered device is left without its key.
    if let Err(e) = files.write(&key, &reg.chain, &p.pki.chain_pem()) {
        p.store.delete_device(id, &cli_actor()).await?;
        p.publish_crl().await?;
        return Err(e);
    }
    let (key_path, cert_path, ca_path) = (files.key, files.cert, files.ca);
    reg.files = Some(Files {
        key: key_path.display().to_string(),
        certificate: cert_path.display().to_string(),
        ca: ca_path.display().to_string(),
    });
    if g.json {
        output::json(&reg)?;
    } else {
        say!("created {id}");
        say!("  key:         {}", key_path.display());
        say!("  certificate: {}", cert_path.display());
        say!("  CA bundle:   {}", ca_path.display());
        say!("  fingerprint: {}", reg.fingerprint);
        print_claim(&reg);
    }
    Ok(ExitCode::SUCCESS)
}

async fn register_existing(g: &GlobalArgs, p: &Platform, file: &Path) -> Result<ExitCode> {
    let pem =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let cert = p.pki.adopt_device_certificate(&pem)?;
    ensure_free(p, &cert.id).await?;
    let reg = register(p, cert).await?;
    if g.json {
        output::json(&reg)?;
    } else {
        say!("registered {} (serial {})", reg.id, reg.serial);
        print_claim(&reg);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_claim(reg: &Registered) {
    eprintln!(
        "claim code for {}: {} (shown once; print it on the device label)",
        reg.id, reg.claim_code
    );
    eprintln!("QR payload: {}", reg.qr_payload);
}

async fn list(
    g: &GlobalArgs,
    p: &Platform,
    state: Option<StateArg>,
    search: Option<String>,
) -> Result<ExitCode> {
    let state = state.map(|s| match s {
        StateArg::Unbound => DeviceState::Unbound,
        StateArg::Bound => DeviceState::Bound,
        StateArg::Disabled => DeviceState::Disabled,
        StateArg::Revoked => DeviceState::Revoked,
    });
    let devices = p
        .store
        .list_devices(&DeviceFilter {
            state,
            search,
            ..Default::default()
        })
        .await?;
    if g.json {
        let rows: Vec<DeviceSummary<'_>> = devices.iter().map(DeviceSummary::from).collect();
        output::json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<24} {:<9} {:<7} {:<25} {:<25} FINGERPRINT",
        "ID",
        "STATE",
        "ONLINE",
        "LAST SEEN",
        "CERT EXPIRES"
    );
    for d in &devices {
        say!(
            "{:<24} {:<9} {:<7} {:<25} {:<25} {}…",
            d.id.as_str(),
            d.state.as_str(),
            if d.online { "yes" } else { "no" },
            d.last_seen.map_or_else(|| "never".into(), output::when),
            output::when(d.not_after),
            d.fingerprint.get(..16).unwrap_or(&d.fingerprint)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn show(g: &GlobalArgs, d: &Device) -> Result<ExitCode> {
    if g.json {
        output::json(d)?;
        return Ok(ExitCode::SUCCESS);
    }
    let owner = d.owner.as_ref().map_or_else(|| "-".into(), output::owner);
    say!("id           {}", d.id);
    say!("state        {}", d.state);
    say!("owner        {owner}");
    say!("online       {}", if d.online { "yes" } else { "no" });
    say!(
        "last seen    {}",
        d.last_seen.map_or_else(|| "never".into(), output::when)
    );
    say!("serial       {}", d.serial);
    say!("fingerprint  {}", d.fingerprint);
    say!("not after    {}", output::when(d.not_after));
    say!("created      {}", output::when(d.created_at));
    say!("updated      {}", output::when(d.updated_at));
    Ok(ExitCode::SUCCESS)
}

fn show_json_only(g: &GlobalArgs, d: &Device) -> Result<ExitCode> {
    if g.json {
        output::json(d)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn qr(
    g: &GlobalArgs,
    p: &Platform,
    id: &DeviceId,
    rotate: bool,
    png: Option<PathBuf>,
    svg: Option<PathBuf>,
) -> Result<ExitCode> {
    if !rotate {
        bail!(
            "only a hash of the claim code is kept, so its QR code cannot be shown again; pass --rotate-claim-code to issue a new code (the old one becomes void)"
        );
    }
    let code = registration::new_claim_code();
    let device = p
        .store
        .set_claim_code(id, &code.hash(), &cli_actor())
        .await?;
    let payload = registration::qr_payload(id, &device.fingerprint, &code);
    if let Some(path) = &png {
        write_atomic(path, &label::png(&payload)?, 0o600)?;
    }
    if let Some(path) = &svg {
        write_atomic(path, label::svg(&payload)?.as_bytes(), 0o600)?;
    }
    if g.json {
        output::json(&serde_json::json!({
            "id": id,
            "claim_code": code.as_str(),
            "qr_payload": payload,
        }))?;
    } else {
        if png.is_none() && svg.is_none() {
            say!("{}", label::terminal(&payload)?);
        }
        say!(
            "claim code for {id}: {} (the previous code is void)",
            code.as_str()
        );
        say!("QR payload: {payload}");
    }
    Ok(ExitCode::SUCCESS)
}
