//! The recorded Service Bus responses in `shared/` (third-party data, read where it lies).

use std::path::{Path, PathBuf};

/// `$BLEND_SCALER_SHARED/fixtures/servicebus`, else `shared/` beside the repository.
pub fn fixtures() -> PathBuf {
    let mut tried = Vec::new();
    if let Ok(dir) = std::env::var("BLEND_SCALER_SHARED") {
        tried.push(PathBuf::from(dir).join("fixtures/servicebus"));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(parent) = repo.parent() {
        tried.push(parent.join("shared/fixtures/servicebus"));
    }
    if let Some(found) = tried.iter().find(|d| d.join("SOURCES.md").is_file()) {
        return found.clone();
    }
    panic!(
        "the recorded Service Bus responses are missing: expected a folder \
         `shared/fixtures/servicebus/` (with SOURCES.md and the *.xml recordings) beside the \
         repository, or set BLEND_SCALER_SHARED to the `shared` folder. Looked in: {}",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}
