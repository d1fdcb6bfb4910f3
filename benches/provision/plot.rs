//! Plots: claims Bound over time per subject as SVG, converted to PNG with rsvg-convert
//! (installed with apt-get when missing).

use crate::prelude::*;
use crate::results::RunResult;
use crate::subjects::Subject;

pub(crate) fn ensure_rsvg() -> bool {
    if Command::new("rsvg-convert")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    log("installing librsvg2-bin (rsvg-convert) for the PNG plot");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "librsvg2-bin",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if install() {
        return true;
    }
    let _ = Command::new("apt-get")
        .args(["update", "-q"])
        .stdout(Stdio::null())
        .status();
    install()
}

/// (subject, colour, timeline)
pub(crate) type PlotLine<'a> = (&'static str, &'static str, &'a Vec<(f64, usize)>);

/// An SVG line plot of claims Bound over time, one line per subject, for one N.
pub(crate) fn svg_plot(results: &[RunResult], n: usize) -> Option<String> {
    let lines: Vec<PlotLine> = results
        .iter()
        .filter(|r| r.n == n && !r.provision.timeline.is_empty())
        .map(|r| {
            let s = r.subject.expect("subject");
            let color = match s {
                Subject::Ours => "#1f77b4",
                Subject::Incumbent => "#d62728",
                Subject::Ceiling => "#2ca02c",
                Subject::Limit => "#7f7f7f",
            };
            (s.name(), color, &r.provision.timeline)
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    let (w, h, ml, mr, mt, mb) = (900.0, 500.0, 70.0, 20.0, 40.0, 50.0);
    let tmax = lines
        .iter()
        .flat_map(|(_, _, t)| t.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        * 1.03;
    let x = |t: f64| ml + (w - ml - mr) * t / tmax;
    let y = |c: f64| h - mb - (h - mt - mb) * c / n as f64;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='13'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{}' y='24' text-anchor='middle' font-size='16'>Claims Bound over time, burst of N = {n}</text>\n",
        w / 2.0
    );
    // Axes and ticks.
    svg.push_str(&format!(
        "<line x1='{ml}' y1='{}' x2='{}' y2='{}' stroke='black'/>\n<line x1='{ml}' y1='{mt}' x2='{ml}' y2='{}' stroke='black'/>\n",
        h - mb, w - mr, h - mb, h - mb
    ));
    let step = nice_step(tmax / 8.0);
    let mut t = 0.0;
    while t <= tmax {
        svg.push_str(&format!(
            "<line x1='{0}' y1='{1}' x2='{0}' y2='{2}' stroke='#ddd'/><text x='{0}' y='{3}' text-anchor='middle'>{4}</text>\n",
            x(t), mt, h - mb, h - mb + 18.0, t
        ));
        t += step;
    }
    for k in 0..=4 {
        let c = n as f64 * k as f64 / 4.0;
        svg.push_str(&format!(
            "<line x1='{ml}' y1='{0}' x2='{1}' y2='{0}' stroke='#ddd'/><text x='{2}' y='{3}' text-anchor='end'>{4}</text>\n",
            y(c), w - mr, ml - 6.0, y(c) + 4.0, c.round()
        ));
    }
    svg.push_str(&format!(
        "<text x='{}' y='{}' text-anchor='middle'>seconds since the burst started</text>\n<text x='18' y='{}' text-anchor='middle' transform='rotate(-90 18 {})'>claims Bound</text>\n",
        (ml + w - mr) / 2.0, h - 12.0, (mt + h - mb) / 2.0, (mt + h - mb) / 2.0
    ));
    for (i, (name, color, tl)) in lines.iter().enumerate() {
        let mut pts = format!("{},{} ", x(0.0), y(0.0));
        for (t, c) in tl.iter() {
            pts.push_str(&format!("{:.1},{:.1} ", x(*t), y(*c as f64)));
        }
        svg.push_str(&format!(
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{pts}'/>\n<rect x='{}' y='{}' width='14' height='4' fill='{color}'/><text x='{}' y='{}'>{name}</text>\n",
            ml + 20.0,
            mt + 10.0 + 20.0 * i as f64,
            ml + 40.0,
            mt + 16.0 + 20.0 * i as f64
        ));
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

pub(crate) fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1e-9).log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}
