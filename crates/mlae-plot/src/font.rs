//! The font plot labels are drawn with.

use plotters::style::FontStyle;
use std::sync::OnceLock;

/// Registers a TrueType font for plot labels, once per process, and says whether one was
/// found. plotters draws text through ab_glyph, which needs font bytes; we use a system font
/// (or `MLAE_PLOT_FONT`) rather than shipping one. Without any, plots are drawn unlabelled.
pub fn register_plot_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        const CANDIDATES: &[&str] = &[
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
        ];
        let from_env = std::env::var_os("MLAE_PLOT_FONT").map(std::path::PathBuf::from);
        let found =
            from_env.into_iter().chain(CANDIDATES.iter().map(Into::into)).find_map(|p| std::fs::read(p).ok());
        match found {
            Some(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            }
            None => {
                tracing::warn!("no TrueType font found (set MLAE_PLOT_FONT); plots are drawn without labels");
                false
            }
        }
    })
}
