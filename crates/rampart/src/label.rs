//! Device labels: the claim QR code as terminal art, PNG or SVG.

use anyhow::{Context, Result};
use qrcode::{Color, EcLevel, QrCode};

/// Light modules around the code, as the QR specification asks (ISO 18004 §6.3.8).
const QUIET_ZONE: usize = 4;
/// Pixels per module in PNG output.
const PNG_SCALE: usize = 8;

fn code(payload: &str) -> Result<QrCode> {
    QrCode::with_error_correction_level(payload, EcLevel::M)
        .context("the claim payload does not fit in a QR code")
}

/// Block-character rendering for a terminal (two modules per character row).
pub fn terminal(payload: &str) -> Result<String> {
    Ok(code(payload)?
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}

/// An SVG document.
pub fn svg(payload: &str) -> Result<String> {
    Ok(code(payload)?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build())
}

/// A greyscale PNG image.
pub fn png(payload: &str) -> Result<Vec<u8>> {
    let qr = code(payload)?;
    let modules = qr.width();
    let colors = qr.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PNG_SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
        for y in my * PNG_SCALE..(my + 1) * PNG_SCALE {
            let row = y * side;
            pixels[row + mx * PNG_SCALE..row + (mx + 1) * PNG_SCALE].fill(0);
        }
    }
    let mut out = Vec::new();
    let side32 = u32::try_from(side).context("QR image too large")?;
    let mut encoder = png::Encoder::new(&mut out, side32, side32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("cannot encode PNG")?;
    writer
        .write_image_data(&pixels)
        .context("cannot encode PNG")?;
    writer.finish().context("cannot encode PNG")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{"deviceId":"greenhouse-1","fingerprint":"00","claimCode":"abc"}"#;

    #[test]
    fn png_is_a_square_greyscale_image_with_dark_modules() {
        let bytes = png(PAYLOAD).expect("png");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("header");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("frame");
        assert_eq!(info.width, info.height);
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        let dark = buf.iter().filter(|&&p| p == 0).count();
        assert!(dark > 0 && dark < buf.len() / 2, "{dark} dark pixels");
        // The quiet zone is light.
        assert!(
            buf[..(info.width as usize) * QUIET_ZONE * PNG_SCALE]
                .iter()
                .all(|&p| p == 255)
        );
    }

    #[test]
    fn svg_and_terminal_render() {
        assert!(svg(PAYLOAD).expect("svg").contains("<svg"));
        assert!(terminal(PAYLOAD).expect("terminal").contains('█'));
    }
}
