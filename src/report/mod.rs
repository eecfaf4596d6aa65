//! Reports: what a model holds ([`inspect`]) and, later, what each pass did.

pub mod compile;
pub mod html;
pub mod inspect;

/// Write a compile report: JSON for `.json`, HTML for `.html` (temp file + rename).
pub fn write_report(r: &compile::CompileReport, path: &std::path::Path) -> std::io::Result<()> {
    let text = match path.extension().and_then(|e| e.to_str()) {
        Some("html") | Some("htm") => html::render(r),
        _ => serde_json::to_string_pretty(r).map_err(std::io::Error::other)?,
    };
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
