//! DNS names: fully qualified forms and label rules, shared by the config and the records.

/// A name given relative to the zone (`demo`) or absolutely (`demo.zone` or `demo.zone.`), fully
/// qualified. Only a whole-label suffix counts as "inside the zone".
pub fn name_in_zone(name: &str, zone: &str) -> String {
    let name = name.to_ascii_lowercase();
    let zone = fqdn(zone);
    let bare_zone = zone.trim_end_matches('.');
    if name.ends_with('.') {
        name
    } else if name == bare_zone || name.ends_with(&format!(".{bare_zone}")) {
        format!("{name}.")
    } else {
        format!("{name}.{zone}")
    }
}

/// Lower-cases a name and adds the trailing dot.
pub fn fqdn(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

/// A DNS label: 1–63 letters, digits or hyphens, not starting or ending with a hyphen.
/// Region names and the owner id must be labels too, since they appear in record names and TXT data.
/// A DNS label: 1-63 letters, digits or hyphens (and `_` when allowed), no hyphen at either end.
pub fn is_label(label: &str, allow_underscore: bool) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || (allow_underscore && c == '_');
    !label.is_empty()
        && label.len() <= 63
        && label.chars().all(ok_char)
        && !label.starts_with('-')
        && !label.ends_with('-')
}
