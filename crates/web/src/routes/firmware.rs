//! The firmware API: uploaded bundles and the trusted signing keys
//! (`/api/v1/firmware`). An upload is verified against the trusted keys
//! with `rampart_ota::verify` (the device's own checks), stored
//! content-addressed and recorded; a refusal says why, stores nothing and
//! is audited, as `rampart firmware upload` does.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rampart_ota::{OtaError, PublicKey, VerifyError};
use rampart_store::{Actor, AuditEntry, Firmware, FirmwareKey, NewFirmware, StoreError};
use serde_json::{Value, json};

use super::account::{Caller, principal};
use super::origin_of;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

type ApiResult = Result<Response, ApiError>;

/// Room for a bundle's header, manifest and signature around the image
/// (the manifest is a few hundred bytes at most).
pub(crate) const BUNDLE_ROOM: u64 = 4096;

/// The request body limit of an upload: the largest image plus its room.
pub(crate) fn upload_limit(max_image_size: u64) -> usize {
    usize::try_from(max_image_size.saturating_add(BUNDLE_ROOM)).unwrap_or(usize::MAX)
}

fn store_failure(e: &StoreError) -> ApiError {
    tracing::error!(error = %e, "firmware store failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store_error",
        "the firmware registry could not be read or written; retry, or check the server log",
    )
}

/// A firmware row as the API and the console show it: the record plus
/// the name of its key while that key is trusted.
pub(crate) fn view(f: &Firmware, keys: &[FirmwareKey]) -> Value {
    let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        let name = keys
            .iter()
            .find(|k| k.key_id == f.key_id)
            .map(|k| k.name.clone());
        m.insert("keyName".into(), json!(name));
    }
    v
}

/// Every upload, newest first, and the trusted keys.
pub(crate) async fn list_with_keys(
    state: &AppState,
) -> Result<(Vec<Firmware>, Vec<FirmwareKey>), ApiError> {
    let ota = state.ota()?;
    let list = ota
        .firmware
        .list_firmware()
        .await
        .map_err(|e| store_failure(&e))?;
    let keys = ota
        .firmware
        .firmware_keys()
        .await
        .map_err(|e| store_failure(&e))?;
    Ok((list, keys))
}

/// `GET /api/v1/firmware`.
#[utoipa::path(get, path = "/api/v1/firmware", tag = "firmware",
    responses((status = 200, description = "Every upload, newest first", body = crate::routes::schemas::FirmwareListBody)))]
pub(super) async fn list(State(state): State<AppState>) -> ApiResult {
    let (list, keys) = list_with_keys(&state).await?;
    Ok(Json(json!({
        "firmware": list.iter().map(|f| view(f, &keys)).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /api/v1/firmware/{id}`.
#[utoipa::path(get, path = "/api/v1/firmware/{id}", tag = "firmware",
    params(("id" = u64, Path, description = "The firmware number")),
    responses((status = 200, description = "The upload, with its signed manifest and signature in hex", body = crate::routes::schemas::FirmwareDetailSchema),
        (status = 404, description = "No such firmware", body = crate::error::ErrorBody)))]
pub(super) async fn show(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "firmware_not_found",
            format!("no firmware with id '{id}'"),
        )
    };
    let number: u64 = id.parse().map_err(|_| not_found())?;
    let ota = state.ota()?;
    let f = ota
        .firmware
        .firmware(number)
        .await
        .map_err(|e| store_failure(&e))?
        .ok_or_else(not_found)?;
    let keys = ota
        .firmware
        .firmware_keys()
        .await
        .map_err(|e| store_failure(&e))?;
    let mut v = view(&f, &keys);
    if let Value::Object(m) = &mut v {
        m.insert("manifest".into(), json!(hex::encode(&f.manifest)));
        m.insert("signature".into(), json!(hex::encode(&f.signature)));
    }
    Ok(Json(v).into_response())
}

/// `GET /api/v1/firmware/keys`.
#[utoipa::path(get, path = "/api/v1/firmware/keys", tag = "firmware",
    responses((status = 200, description = "The public keys trusted to sign firmware", body = crate::routes::schemas::FirmwareKeysBody)))]
pub(super) async fn keys(State(state): State<AppState>) -> ApiResult {
    let keys = state
        .ota()?
        .firmware
        .firmware_keys()
        .await
        .map_err(|e| store_failure(&e))?;
    Ok(Json(json!({ "keys": keys })).into_response())
}

/// The API code of a bundle refusal (the stable `VerifyError` codes with
/// underscores; an unknown key is `untrusted_key`).
pub(crate) fn refusal_code(e: &VerifyError) -> &'static str {
    match e.code() {
        "not-a-bundle" => "not_a_bundle",
        "unsupported-format" => "unsupported_format",
        "truncated" => "truncated",
        "trailing-bytes" => "trailing_bytes",
        "manifest-too-long" => "manifest_too_long",
        "bad-version" => "bad_version",
        "bad-manifest" => "bad_manifest",
        "unknown-key" => "untrusted_key",
        "bad-signature" => "bad_signature",
        "oversized" => "oversized",
        "wrong-device-type" => "wrong_device_type",
        "hash-mismatch" => "hash_mismatch",
        _ => "bundle_refused",
    }
}

/// Verifies, stores and records an uploaded bundle in the name of `p`.
/// Every refusal is audited with its reason.
pub(crate) async fn upload_bundle(
    state: &AppState,
    p: &Principal,
    source: &str,
    bundle: Vec<u8>,
) -> Result<Firmware, ApiError> {
    let ota = state.ota()?;
    let actor = Actor {
        name: p.name.clone(),
        source: source.to_owned(),
    };
    let refuse = async |status: StatusCode, code: &'static str, message: String| {
        tracing::info!(user = %p.name, reason = code, "firmware upload refused");
        if let Err(e) = state
            .store()
            .record_audit(AuditEntry {
                actor: actor.clone(),
                action: "firmware.upload-refused".into(),
                subject: None,
                detail: json!({ "reason": code, "message": message }),
            })
            .await
        {
            return store_failure(&e);
        }
        ApiError::new(status, code, message)
    };
    let trusted = ota
        .firmware
        .firmware_keys()
        .await
        .map_err(|e| store_failure(&e))?
        .iter()
        .filter_map(|k| {
            let key = PublicKey::from_hex(&k.public_key);
            if key.is_none() {
                tracing::error!(key = %k.name, "a trusted firmware key is damaged in the store");
            }
            key
        })
        .collect::<Vec<_>>();
    let verified = match rampart_ota::verify(bundle, &trusted, ota.max_image_size, None) {
        Ok(v) => v,
        Err(OtaError::Verify(e)) => {
            return Err(refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                refusal_code(&e),
                format!("the bundle is refused: {e}"),
            )
            .await);
        }
        Err(e) => {
            return Err(refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bundle_refused",
                format!("the bundle is refused: {e}"),
            )
            .await);
        }
    };
    let images = ota.images.clone();
    let (verified, stored) = tokio::task::spawn_blocking(move || {
        let r = rampart_ota::store_image(&images, &verified);
        (verified, r)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "the image store task failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "image_store_failed",
            "the image could not be stored",
        )
    })?;
    let image_path = stored.map_err(|e| {
        tracing::error!(error = %e, "cannot store a firmware image");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "image_store_failed",
            "the image could not be written to the data directory; check the server log",
        )
    })?;
    let proof = verified.proof().map_err(|e| {
        tracing::error!(error = %e, "a verified bundle no longer verifies");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bundle_refused",
            "the bundle could not be verified again",
        )
    })?;
    match ota
        .firmware
        .add_firmware(NewFirmware::verified(&proof), &actor)
        .await
    {
        Ok(f) => {
            tracing::info!(user = %p.name, id = f.id, version = %f.version, device_type = %f.device_type, sha256 = %f.sha256, "firmware uploaded");
            Ok(f)
        }
        Err(e) => {
            // The image may be another record's too; remove it only if no
            // record names it.
            let sha = &verified.manifest().image_sha256;
            if let Ok(list) = ota.firmware.list_firmware().await
                && !list.iter().any(|f| &f.sha256 == sha)
            {
                let _ = tokio::fs::remove_file(&image_path).await;
            }
            Err(match e {
                StoreError::FirmwareKeyNotTrusted(_) => {
                    refuse(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "untrusted_key",
                        format!("the bundle is refused: {e}"),
                    )
                    .await
                }
                StoreError::FirmwareExists { .. } => {
                    refuse(StatusCode::CONFLICT, "firmware_exists", e.to_string()).await
                }
                other => store_failure(&other),
            })
        }
    }
}

/// `POST /api/v1/firmware` with the bundle as the body.
#[utoipa::path(post, path = "/api/v1/firmware", tag = "firmware",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A bundle made by `rampart firmware sign`"),
    responses((status = 201, description = "The recorded upload", body = crate::routes::schemas::FirmwareSchema),
        (status = 409, description = "`firmware_exists`: this version is uploaded already for that device type", body = crate::error::ErrorBody),
        (status = 413, description = "Larger than `firmware.max_image_size` plus the manifest", body = crate::error::ErrorBody),
        (status = 415, description = "Not `application/octet-stream`", body = crate::error::ErrorBody),
        (status = 422, description = "Refused with the reason: `untrusted_key`, `bad_signature`, `truncated`, `hash_mismatch`, `oversized`, `not_a_bundle`, ...", body = crate::error::ErrorBody)))]
pub(super) async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let p = principal(caller)?;
    let octets = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/octet-stream"))
        });
    if !octets {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the bundle as the body with Content-Type: application/octet-stream",
        ));
    }
    let limit = upload_limit(state.ota()?.max_image_size);
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the bundle is larger than {limit} bytes (firmware.max_image_size plus the manifest)"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "truncated",
                format!("the bundle could not be read: {r}"),
            )
        }
    })?;
    let origin = origin_of(client, &headers);
    let f = upload_bundle(&state, &p, &origin.ip, bytes.to_vec()).await?;
    let keys = state
        .ota()?
        .firmware
        .firmware_keys()
        .await
        .map_err(|e| store_failure(&e))?;
    Ok((StatusCode::CREATED, Json(view(&f, &keys))).into_response())
}
