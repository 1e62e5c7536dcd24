//! Keeps cephx keys and oversized text out of everything this process
//! writes: run status, events and logs. Ceph's own output (stderr of `rbd`)
//! reaches messages, and `rbd` echoes a key it cannot parse, so redaction is
//! applied where text leaves the process, not where it is made.
//!
//! Three things are redacted: every key of a Secret this process has read
//! (whatever its shape: a malformed key is exactly what gets echoed), every
//! token shaped like a cephx key (base64: `AQ…==` in 40 characters, or
//! Tentacle's AES-256 `Ag…=` in 60), and the
//! rest of any `key = …` line (a keyring line).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::Value;

/// The most a condition message may take: a status is written whole on every
/// change, and the API server refuses large objects.
pub const MAX_MESSAGE: usize = 1024;

pub const REDACTED: &str = "[redacted]";

const TRUNCATED: &str = "…[truncated]";

/// Shorter values are not remembered: no real key is that short, and
/// redacting a short common string would mangle unrelated text.
const MIN_SECRET_LEN: usize = 8;

/// Bounds memory when many Secrets are read over a long life.
const MAX_SECRETS: usize = 4096;

static SECRETS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Remembers the keys of a connection Secret's data (`userKey`, and the
/// `key = …` lines of `keyring`) so that they are redacted from then on.
pub fn remember_connection_secret<'a>(data: impl IntoIterator<Item = (&'a str, &'a [u8])>) {
    for (name, value) in data {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        match name {
            "userKey" => remember(text.trim()),
            "keyring" => {
                for line in text.lines() {
                    if let Some(v) = key_line_value(line) {
                        remember(v.trim());
                    }
                }
            }
            _ => {}
        }
    }
}

fn remember(secret: &str) {
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut s = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    if s.len() >= MAX_SECRETS && !s.contains(secret) {
        // Dropping one is safe: a real key is still caught by its shape.
        let first = s.iter().next().cloned();
        if let Some(f) = first {
            s.remove(&f);
        }
    }
    s.insert(secret.to_string());
}

/// The value of a keyring `key = value` line (case-insensitive `key`).
fn key_line_value(line: &str) -> Option<&str> {
    let t = line.trim_start();
    t.get(..3).filter(|k| k.eq_ignore_ascii_case("key"))?;
    t[3..].trim_start().strip_prefix('=')
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Length of a cephx-key-shaped token starting at `i`, if there is one.
///
/// A key is base64 of a 2-byte little-endian type, 8 bytes of creation time,
/// a 2-byte length and the secret: type 1 (AES, every release) is `AQ…==`
/// in 40 characters, type 2 (AES-256, the default of clusters made by Ceph
/// 20.2 Tentacle) is `Ag…=` in 60. An older `rbd` that cannot parse a
/// Tentacle key echoes it whole in its error ("Malformed input").
fn key_token_at(bytes: &[u8], i: usize) -> Option<usize> {
    // After `=` is a start: rbd prints `val=<key>`.
    if i > 0 && is_b64(bytes[i - 1]) {
        return None;
    }
    let (len, pad) = match bytes.get(i..i + 2)? {
        b"AQ" => (40, 2),
        b"Ag" => (60, 1),
        _ => return None,
    };
    let tok = bytes.get(i..i + len)?;
    let shaped =
        tok[..len - pad].iter().copied().all(is_b64) && tok[len - pad..].iter().all(|&b| b == b'=');
    let ends = bytes.get(i + len).is_none_or(|&b| !is_b64(b) && b != b'=');
    (shaped && ends).then_some(len)
}

/// Finds the start of a `key = ` in `line` at a word start, and where its value starts.
fn key_assignment(line: &str) -> Option<(usize, usize)> {
    let lower = line.to_ascii_lowercase();
    let mut from = 0;
    while let Some(p) = lower[from..].find("key") {
        let at = from + p;
        let word_start = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric();
        let rest = &line[at + 3..];
        let trimmed = rest.trim_start();
        if word_start && let Some(v) = trimmed.strip_prefix('=') {
            let value_start = line.len() - v.len();
            return Some((at, value_start));
        }
        from = at + 3;
    }
    None
}

/// `text` with every secret, key-shaped token and `key = …` value replaced.
pub fn text(text: &str) -> Cow<'_, str> {
    let mut out: Cow<str> = Cow::Borrowed(text);
    {
        let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
    }
    if out.contains("AQ") || out.contains("Ag") {
        let bytes = out.as_bytes();
        let mut r = String::with_capacity(out.len());
        let mut i = 0;
        let mut last = 0;
        let mut changed = false;
        // Every 'A' that may start a key: both shapes begin with it.
        while let Some(p) = out[i..].find('A') {
            let at = i + p;
            match key_token_at(bytes, at) {
                Some(len) => {
                    r.push_str(&out[last..at]);
                    r.push_str(REDACTED);
                    last = at + len;
                    i = last;
                    changed = true;
                }
                None => i = at + 1,
            }
        }
        if changed {
            r.push_str(&out[last..]);
            out = Cow::Owned(r);
        }
    }
    let has_key_line = out.lines().any(|l| key_assignment(l).is_some());
    if has_key_line {
        let mut r = String::with_capacity(out.len());
        for (n, line) in out.split('\n').enumerate() {
            if n > 0 {
                r.push('\n');
            }
            match key_assignment(line) {
                // The rest of the line: a malformed key has no shape to find its end by.
                Some((_, v)) => {
                    r.push_str(&line[..v]);
                    r.push(' ');
                    r.push_str(REDACTED);
                }
                None => r.push_str(line),
            }
        }
        out = Cow::Owned(r);
    }
    out
}

/// At most `max` bytes of `text`, cut on a character boundary and marked.
pub fn bound(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut cut = max.saturating_sub(TRUNCATED.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}{TRUNCATED}", &text[..cut]))
}

/// A message ready to leave the process: redacted first (a cut key would no
/// longer have the shape that finds it), then bounded.
pub fn message(text_in: &str) -> String {
    bound(&text(text_in), MAX_MESSAGE).into_owned()
}

/// Redacts every string in a JSON value, in place.
pub fn value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(r) = text(s) {
                *s = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(value),
        Value::Object(o) => o.values_mut().for_each(value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AQBHk2VmAAAAABAAnXg1kE3Gm2r0bEq6Yf1gkw==";

    #[test]
    fn cephx_shaped_tokens_are_redacted() {
        assert_eq!(KEY.len(), 40);
        let m = format!("auth failed for {KEY}; then '{KEY}'");
        assert_eq!(text(&m), "auth failed for [redacted]; then '[redacted]'");
        // Not the shape: part of a longer base64 run, or no padding.
        let longer = format!("x{KEY}");
        assert_eq!(text(&longer), longer);
        let no_pad = &KEY[..38];
        assert_eq!(text(no_pad), no_pad);
    }

    /// Tentacle (20.2) makes AES-256 keys (type 2); an older rbd handed one
    /// prints it in full. The line is the one Pacific's rbd printed in the lab.
    #[test]
    fn tentacle_aes256_keys_are_redacted_where_an_old_rbd_echoes_them() {
        const KEY256: &str = "AgAAAQIDBAUGByAAZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";
        assert_eq!(KEY256.len(), 60);
        let stderr = format!(
            "auth: error parsing file /tmp/k: error setting modifier for [client.rbdstep] type=key val={KEY256}: Malformed input"
        );
        assert_eq!(
            text(&stderr),
            "auth: error parsing file /tmp/k: error setting modifier for [client.rbdstep] type=key val=[redacted]: Malformed input"
        );
        // Not the shape: one character short, or inside a longer run.
        let short = &KEY256[1..];
        assert_eq!(text(short), short);
        let longer = format!("{KEY256}A");
        assert_eq!(text(&longer), longer);
        // Both kinds in one text.
        assert_eq!(text(&format!("{KEY} {KEY256}")), "[redacted] [redacted]");
    }

    #[test]
    fn key_lines_are_redacted_to_the_end_of_the_line() {
        let keyring = "[client.csi]\n\tkey = not-base64 at all\n\tcaps mon = \"profile rbd\"";
        assert_eq!(
            text(keyring),
            "[client.csi]\n\tkey = [redacted]\n\tcaps mon = \"profile rbd\""
        );
        assert_eq!(text("Key=abc"), "Key= [redacted]");
        // A word ending in "key" is not a keyring line.
        assert_eq!(text("monkey = 3"), "monkey = 3");
        assert_eq!(text("no keys here"), "no keys here");
    }

    #[test]
    fn remembered_secrets_are_redacted_whatever_their_shape() {
        let odd = "AQ-malformed-key-from-a-secret";
        remember_connection_secret([
            ("keyring", format!("[client.x]\n key = {odd}\n").as_bytes()),
            ("userKey", b"tiny".as_slice()),
        ]);
        let m = format!("failed to decode key '{odd}'");
        assert_eq!(text(&m), "failed to decode key '[redacted]'");
        // Too short to be remembered without mangling ordinary text.
        assert_eq!(text("tiny"), "tiny");
    }

    #[test]
    fn bound_cuts_on_a_char_boundary_with_a_marker() {
        let s = "é".repeat(1000);
        let b = bound(&s, MAX_MESSAGE);
        assert!(b.len() <= MAX_MESSAGE, "{}", b.len());
        assert!(b.ends_with(TRUNCATED));
        assert_eq!(bound("short", MAX_MESSAGE), "short");
        let m = message(&"x".repeat(1 << 20));
        assert_eq!(m.len(), MAX_MESSAGE);
    }

    #[test]
    fn message_redacts_before_cutting() {
        let s = format!("{}{KEY}", "x ".repeat(500));
        let m = message(&s);
        assert!(!m.contains("AQBHk2Vm"), "{m}");
    }

    #[test]
    fn json_strings_are_redacted_everywhere() {
        let mut v = serde_json::json!({"a": [format!("k {KEY}")], "b": {"c": KEY}, "n": 1});
        value(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": ["k [redacted]"], "b": {"c": "[redacted]"}, "n": 1})
        );
    }
}
