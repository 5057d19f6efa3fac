//! The decoders under test, one [`Target`] each.

use crate::run::Target;

pub mod config;
pub mod envelope;
pub mod join;
pub mod manifest;
pub mod noise;

/// Every target's name, in the order a run goes through them.
pub const NAMES: [&str; 5] = ["envelope", "noise", "join", "manifest", "config"];

/// The target called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Target>> {
    Some(match name {
        "envelope" => Box::new(envelope::EnvelopeTarget),
        "noise" => Box::new(noise::Noise::new()?),
        "join" => Box::new(join::Join::new()?),
        "manifest" => Box::new(manifest::ManifestToml),
        "config" => Box::new(config::Config),
        _ => return None,
    })
}

/// An outcome label from an error: its text up to the first detail that varies a lot.
pub(crate) fn label(prefix: &str, error: &dyn std::fmt::Display) -> String {
    let text = error.to_string();
    let cut = text.find(['`', '"', '\'']).unwrap_or(text.len()).min(60);
    let mut end = cut;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{prefix}:{}", &text[..end])
}

/// Bytes as text the way a file reader would hand them over; invalid UTF-8 is replaced so the
/// parser still sees the rest.
pub(crate) fn text(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}
