//! Printing command results: human text, or JSON with `--json`.

use serde::Serialize;

/// Prints `value` as pretty JSON on standard output.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
