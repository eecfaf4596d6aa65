//! The HTML report (a single self-contained page).

use super::compile::CompileReport;

/// Render the report as HTML.
pub fn render(r: &CompileReport) -> String {
    let json = serde_json::to_string(r).unwrap_or_default();
    format!(
        "<!doctype html><meta charset=utf-8><title>hcc report</title><pre>{}</pre><script type=application/json id=report>{}</script>",
        escape(&r.render(usize::MAX)),
        json.replace("</", "<\\/")
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
