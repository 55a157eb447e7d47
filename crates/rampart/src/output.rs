//! Printing command results: human text, or JSON with `--json`.

use serde::Serialize;

/// Prints `value` as pretty JSON on standard output. A reader that went
/// away (`rampart ... --json | head`) ends the output quietly instead of
/// panicking as `println!` would.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value)?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to standard output"))
        }
        _ => Ok(()),
    }
}

/// RFC 3339 for human output.
pub fn when(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// An owner for human output: `user ann`, `group lab`.
pub fn owner(o: &rampart_store::Owner) -> String {
    match o {
        rampart_store::Owner::User(u) => format!("user {u}"),
        rampart_store::Owner::Group(g) => format!("group {g}"),
    }
}
