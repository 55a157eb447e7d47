//! The firmware page: uploaded bundles, the trusted keys, and (for
//! admins) the upload form.

use maud::{Markup, html};
use rampart_store::{Firmware, FirmwareKey};

use super::layout::page;
use super::pages::when;
use crate::auth::{Action, Principal, authorize};

/// Everything the firmware page shows.
#[derive(Debug)]
pub struct FirmwareView<'a> {
    /// The caller.
    pub principal: &'a Principal,
    /// Their CSRF token (the upload sends it in `X-CSRF-Token`).
    pub csrf_token: &'a str,
    /// Every upload, newest first.
    pub firmware: &'a [Firmware],
    /// The trusted keys.
    pub keys: &'a [FirmwareKey],
    /// Largest image accepted, bytes.
    pub max_image_size: u64,
}

/// Bytes for people: `1.5 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let name = UNITS.get(unit).copied().unwrap_or("B");
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {name}")
    }
}

/// `/firmware`.
pub fn firmware(v: &FirmwareView<'_>) -> Markup {
    let may_upload = authorize(Some(v.principal), Action::UploadFirmware).is_ok();
    page(
        "Firmware",
        Some(v.principal),
        "/firmware",
        html! {
            (super::console::script())
            h1 { "Firmware" }
            p.hint.lead { "Signed firmware bundles (" code { "rampart firmware sign" } "). Each is verified against the trusted keys when it is uploaded; devices verify it again before they install it." }
            @if may_upload {
                div.card #upload {
                    h2 { "Upload a bundle" }
                    form #firmware-upload method="post" action="/api/v1/firmware" enctype="application/octet-stream" data-csrf=(v.csrf_token) {
                        label for="bundle" { "Bundle file" }
                        input #bundle type="file" name="bundle" required;
                        p.hint { "Up to " (size(v.max_image_size)) " of image. Bundles not signed by a trusted key are refused with the reason." }
                        button type="submit" { "Upload" }
                        p #upload-status role="status" aria-live="polite" {}
                        noscript { p.hint { "Uploading from the console needs JavaScript; without it use " code { "rampart firmware upload BUNDLE" } " or POST the bundle to /api/v1/firmware." } }
                    }
                }
            }
            div.card { div.table-wrap { table #firmware-list {
                thead { tr { th { "Id" } th { "Version" } th { "Device type" } th { "Security version" } th { "Size" } th { "Key" } th { "Uploaded" } th { "By" } } }
                tbody {
                    @if v.firmware.is_empty() {
                        tr { td colspan="8" { span.hint { "No firmware uploaded yet." } } }
                    }
                    @for f in v.firmware {
                        @let key = v.keys.iter().find(|k| k.key_id == f.key_id);
                        tr {
                            td { (f.id) }
                            td.mono { (f.version) }
                            td.mono { (f.device_type) }
                            td { (f.security_version) }
                            td title={ (f.size) " bytes" } { (size(f.size)) }
                            td {
                                @if let Some(k) = key { (k.name) " " }
                                span.mono.hint { (f.key_id) }
                                @if key.is_none() { " " span.badge.warn { "no longer trusted" } }
                            }
                            td { (when(f.uploaded_at)) }
                            td { (f.uploaded_by) }
                        }
                    }
                }
            } } }
            div.card {
                h2 { "Trusted keys" }
                div.table-wrap { table {
                    thead { tr { th { "Name" } th { "Key id" } th { "Added" } th { "By" } } }
                    tbody {
                        @if v.keys.is_empty() {
                            tr { td colspan="4" { span.hint { "No key is trusted: every upload is refused. Add one with " code { "rampart firmware key add KEY.pub" } "." } } }
                        }
                        @for k in v.keys {
                            tr { td { (k.name) } td.mono { (k.key_id) } td { (when(k.added_at)) } td { (k.added_by) } }
                        }
                    }
                } }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(16 * 1024 * 1024), "16.0 MiB");
    }
}
