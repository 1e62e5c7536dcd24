//! A font-free PNG line plot of bulk-promote time against N: no text is
//! drawn (no font to carry), so BENCHMARKS.md gives the key. x is linear in
//! N with a tick and a faint grid line at each measured N; y is seconds on a
//! log scale with a grid line at each power of ten and ticks at 2..9 of it.

use std::path::Path;

pub type Rgb = [u8; 3];

pub struct Series {
    pub color: Rgb,
    /// (N, seconds)
    pub points: Vec<(f64, f64)>,
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Bresenham, `thick` pixels wide.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb, thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for t in 0..thick {
                self.set(x + t - thick / 2, y, c);
                self.set(x, y + t - thick / 2, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn square(&mut self, (x, y): (i64, i64), r: i64, c: Rgb) {
        for i in -r..=r {
            for j in -r..=r {
                self.set(x + i, y + j, c);
            }
        }
    }

    fn save(&self, path: &Path) -> Result<(), String> {
        let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut enc =
            png::Encoder::new(std::io::BufWriter::new(file), self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&self.px).map_err(|e| e.to_string())
    }
}

pub fn draw(path: &Path, series: &[Series]) -> Result<(), String> {
    let pts = || series.iter().flat_map(|s| s.points.iter().copied());
    let max_n = pts().map(|p| p.0).fold(1.0, f64::max);
    let lo = pts().map(|p| p.1).fold(f64::MAX, f64::min).max(1e-3);
    let hi = pts().map(|p| p.1).fold(0.0, f64::max).max(lo * 10.0);
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let (w, h, m) = (560i64, 360i64, 30i64);
    let mut c = Canvas::new(w as usize, h as usize);
    let x_of = |n: f64| m + ((n / max_n) * (w - 2 * m) as f64) as i64;
    let y_of = |s: f64| {
        let f = (s.max(lo).log10() - d0 as f64) / (d1 - d0) as f64;
        h - m - (f * (h - 2 * m) as f64) as i64
    };
    let (grid, minor, axis) = ([225, 225, 225], [150, 150, 150], [0, 0, 0]);
    for d in d0..=d1 {
        let y = y_of(10f64.powi(d));
        c.line((m, y), (w - m, y), grid, 1);
        for k in 2..10 {
            if d < d1 {
                let y = y_of(k as f64 * 10f64.powi(d));
                c.line((m - 4, y), (m, y), minor, 1);
            }
        }
        c.line((m - 8, y), (m, y), axis, 1);
    }
    let mut ns: Vec<f64> = pts().map(|p| p.0).collect();
    ns.sort_by(f64::total_cmp);
    ns.dedup();
    for n in ns {
        let x = x_of(n);
        c.line((x, m), (x, h - m), grid, 1);
        c.line((x, h - m), (x, h - m + 8), axis, 1);
    }
    c.line((m, m), (m, h - m), axis, 1);
    c.line((m, h - m), (w - m, h - m), axis, 1);
    for s in series {
        let p: Vec<(i64, i64)> = s.points.iter().map(|&(n, t)| (x_of(n), y_of(t))).collect();
        for pair in p.windows(2) {
            c.line(pair[0], pair[1], s.color, 2);
        }
        for &q in &p {
            c.square(q, 3, s.color);
        }
    }
    // The key: one bar per series, top to bottom in the order given.
    for (i, s) in series.iter().enumerate() {
        let y = m + 8 + 10 * i as i64;
        c.line((m + 10, y), (m + 30, y), s.color, 4);
    }
    c.save(path)
}
