//! The report: Markdown tables (per N, footprint, big volumes, targets) and the JSON
//! document, written under bench/results/ with the plots.

use crate::big::BigResult;
use crate::env::Env;
use crate::plot::{ensure_rsvg, svg_plot};
use crate::prelude::*;
use crate::results::RunResult;
use crate::subjects::Subject;

pub(crate) fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}×", a / b)
        }
        _ => "–".into(),
    }
}

pub(crate) fn markdown(results: &[RunResult], meta: &Value) -> String {
    let mut md = String::new();
    md.push_str("# Provisioning benchmark\n\n");
    md.push_str(&header(meta));
    let mut ns: Vec<usize> = results.iter().map(|r| r.n).collect();
    ns.sort();
    ns.dedup();
    for n in ns {
        let runs: Vec<&RunResult> = Subject::ALL
            .iter()
            .filter_map(|&s| results.iter().find(|r| r.n == n && r.subject == Some(s)))
            .collect();
        let ours = runs.iter().find(|r| r.subject == Some(Subject::Ours));
        let others: Vec<&&RunResult> = runs
            .iter()
            .filter(|r| r.subject != Some(Subject::Ours))
            .collect();
        md.push_str(&format!("## N = {n}\n\n| metric |"));
        for r in &runs {
            md.push_str(&format!(" {} |", name(r)));
        }
        if ours.is_some() {
            for r in &others {
                md.push_str(&format!(" ours/{} |", name(r)));
            }
        }
        md.push_str("\n|---|");
        let cols = runs.len() + if ours.is_some() { others.len() } else { 0 };
        md.push_str(&"---:|".repeat(cols));
        md.push('\n');
        type F = fn(&RunResult) -> Option<f64>;
        let rows: Vec<(&str, F, usize)> = vec![
            (
                "claims Bound (ceiling: PVs created)",
                |r| Some(r.provision.done as f64),
                0,
            ),
            ("burst: all Bound (s)", |r| Some(r.provision.all_done_s), 2),
            (
                "burst: claims/s (ceiling: PV creates/s)",
                |r| Some(r.provision.per_s),
                2,
            ),
            ("claim→Bound p50 (s)", |r| Some(r.provision.p(50.0)), 2),
            ("claim→Bound p95 (s)", |r| Some(r.provision.p(95.0)), 2),
            ("claim→Bound p99 (s)", |r| Some(r.provision.p(99.0)), 2),
            (
                "provision: API writes/claim (to Bound+10s)",
                |r| r.provision_req.map(|q| q.writes / r.n as f64),
                2,
            ),
            (
                "provision: API requests/claim (to Bound+10s)",
                |r| r.provision_req.map(|q| q.all / r.n as f64),
                2,
            ),
            (
                "provision: CPU (s)",
                |r| r.provision_fp.as_ref().map(|f| f.cpu_s),
                2,
            ),
            (
                "provision: peak RSS (MiB)",
                |r| r.provision_fp.as_ref().map(|f| f.rss_peak_mb),
                1,
            ),
            (
                "idle RSS with N PVs, 10s after Bound (MiB)",
                |r| r.idle_fp.as_ref().map(|f| f.rss_end_mb),
                1,
            ),
            ("cold start to ready (s)", |r| r.cold_start_s, 2),
            ("restart to ready (s)", |r| r.restart_ready_s, 2),
            (
                "restart: API writes (to ready+10s)",
                |r| r.restart_req.map(|q| q.writes),
                0,
            ),
            (
                "restart: API requests (to ready+10s)",
                |r| r.restart_req.map(|q| q.all),
                0,
            ),
            (
                "restart: RSS at ready+10s (MiB)",
                |r| r.restart_fp.as_ref().map(|f| f.rss_end_mb),
                1,
            ),
            (
                "restart: CPU to ready+10s (s)",
                |r| r.restart_fp.as_ref().map(|f| f.cpu_s),
                2,
            ),
            (
                "reclaim: all PVs+dirs gone (s)",
                |r| r.reclaim.as_ref().map(|b| b.all_done_s),
                2,
            ),
            (
                "reclaim: volumes/s",
                |r| r.reclaim.as_ref().map(|b| b.per_s),
                2,
            ),
            (
                "reclaim: API writes/claim",
                |r| r.reclaim_req.map(|q| q.writes / r.n as f64),
                2,
            ),
            (
                "reclaim: API requests/claim",
                |r| r.reclaim_req.map(|q| q.all / r.n as f64),
                2,
            ),
            (
                "reclaim: CPU (s)",
                |r| r.reclaim_fp.as_ref().map(|f| f.cpu_s),
                2,
            ),
            (
                "reclaim: peak RSS (MiB)",
                |r| r.reclaim_fp.as_ref().map(|f| f.rss_peak_mb),
                1,
            ),
            (
                "VmHWM at end (MiB)",
                |r| {
                    r.reclaim_fp
                        .as_ref()
                        .or(r.provision_fp.as_ref())
                        .map(|f| f.hwm_mb)
                },
                1,
            ),
        ];
        for (label, f, d) in rows {
            let vals: Vec<Option<f64>> = runs.iter().map(|r| f(r)).collect();
            if vals.iter().all(Option::is_none) {
                continue;
            }
            md.push_str(&format!("| {label} |"));
            for v in &vals {
                md.push_str(&format!(" {} |", fmt(*v, d)));
            }
            if let Some(o) = ours {
                for r in &others {
                    md.push_str(&format!(" {} |", ratio(f(o), f(r))));
                }
            }
            md.push('\n');
        }
        md.push_str("\nWhere a claim's time to Bound goes (p50 / p99 seconds, from the bench's watches):\n\n| subject | stage | p50 | p99 |\n|---|---|---:|---:|\n");
        for r in &runs {
            for (stage, v) in &r.stages {
                md.push_str(&format!(
                    "| {} | {stage} | {} | {} |\n",
                    name(r),
                    fmt(v.map(|x| x.0), 2),
                    fmt(v.map(|x| x.1), 2)
                ));
            }
        }
        md.push_str("\nLoad average (1, 5, 15 min) at the start / end of each subject's run:\n\n");
        for r in &runs {
            md.push_str(&format!(
                "- {}: {} / {}\n",
                name(r),
                r.loadavg_start,
                r.loadavg_end
            ));
        }
        for r in &runs {
            for c in &r.capped {
                md.push_str(&format!(
                    "\n**{} capped** at {} s ({}): {c}. Its figures for that phase are what it completed in that time, not a finished burst.\n",
                    name(r),
                    meta["incumbent_cap_s"],
                    "BENCH_INCUMBENT_CAP"
                ));
            }
            if let Some(e) = &r.error {
                md.push_str(&format!("\n**{} failed:** {e}\n", name(r)));
            }
        }
        md.push('\n');
    }
    md
}

pub(crate) fn write_outputs(
    env: &Env,
    tag: &str,
    all: &[RunResult],
    big: &[BigResult],
    meta: &Value,
) -> Res<()> {
    std::fs::create_dir_all(&env.out)?;
    let results: Vec<RunResult> = all.iter().filter(|r| !r.footprint_only).cloned().collect();
    let fps: Vec<RunResult> = all.iter().filter(|r| r.footprint_only).cloned().collect();
    let results = &results[..];
    let targets = targets(results, &fps, big);
    let doc = json!({
        "meta": meta,
        "runs": all.iter().map(RunResult::json).collect::<Vec<_>>(),
        "big_volumes": big.iter().map(BigResult::json).collect::<Vec<_>>(),
        "targets": targets,
    });
    std::fs::write(
        env.out.join(format!("{tag}.json")),
        serde_json::to_string_pretty(&doc)?,
    )?;
    let mut md = markdown(results, meta);
    if !fps.is_empty() {
        md.push_str("## Footprint among pre-existing volumes\n\nN pre-bound PVs and claims made by the bench (not provisioned by either); the provisioner is started among them, measured 30 s after ready, then SIGKILLed and started again.\n\n| subject | PVs+claims | claims Bound at start | start to ready (s) | RSS 30 s after ready (MiB) | VmHWM (MiB) | CPU to then (s) | restart to ready (s) | restart: API writes / requests (to ready+10s) | RSS after restart (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &fps {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
                r.subject.map(|s| s.name()).unwrap_or(""),
                r.n,
                r.provision.done,
                fmt(r.cold_start_s, 2),
                fmt(r.idle_fp.as_ref().map(|f| f.rss_end_mb), 1),
                fmt(r.idle_fp.as_ref().map(|f| f.hwm_mb), 1),
                fmt(r.idle_fp.as_ref().map(|f| f.cpu_s), 2),
                fmt(r.restart_ready_s, 2),
                fmt(r.restart_req.map(|q| q.writes), 0),
                fmt(r.restart_req.map(|q| q.all), 0),
                fmt(r.restart_fp.as_ref().map(|f| f.rss_end_mb), 1),
            ));
        }
        for r in &fps {
            md.push_str(&format!(
                "\n- {}: load average {} at its start, {} at its end",
                name(r),
                r.loadavg_start,
                r.loadavg_end
            ));
            if let Some(e) = &r.error {
                md.push_str(&format!("\n\n**{} failed:** {e}\n", name(r)));
            }
        }
        md.push_str("\n\n");
    }
    if !big.is_empty() {
        md.push_str(&big_table(big));
    }
    md.push_str("## Targets\n\n| target | measured | met |\n|---|---|---|\n");
    for t in targets.as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            t["target"].as_str().unwrap_or(""),
            t["measured"].as_str().unwrap_or(""),
            match t["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            }
        ));
    }
    let mut ns: Vec<usize> = results.iter().map(|r| r.n).collect();
    ns.sort();
    ns.dedup();
    let rsvg = ensure_rsvg();
    for n in ns {
        if let Some(svg) = svg_plot(results, n) {
            let svg_path = env.out.join(format!("{tag}-bound-n{n}.svg"));
            std::fs::write(&svg_path, svg)?;
            let png = svg_path.with_extension("png");
            if rsvg
                && Command::new("rsvg-convert")
                    .arg("-o")
                    .arg(&png)
                    .arg(&svg_path)
                    .status()
                    .is_ok_and(|s| s.success())
            {
                md.push_str(&format!(
                    "\n![claims Bound over time, N = {n}]({})\n",
                    png.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    std::fs::write(env.out.join(format!("{tag}.md")), &md)?;
    println!("{md}");
    Ok(())
}

/// Issue 13's targets, from what this run measured ("not measured" otherwise).
pub(crate) fn targets(results: &[RunResult], fps: &[RunResult], big: &[BigResult]) -> Value {
    let get = |s: Subject, n: usize| results.iter().find(|r| r.n == n && r.subject == Some(s));
    let mut out = vec![];
    let mut push = |target: &str, measured: Option<(String, bool)>| {
        out.push(match measured {
            Some((m, met)) => json!({"target": target, "measured": m, "met": met}),
            None => json!({"target": target, "measured": "not measured in this run", "met": null}),
        });
    };
    let capped = |r: &RunResult| {
        if r.capped.iter().any(|c| c.starts_with("provision")) {
            " (incumbent capped: its rate over the cap)"
        } else {
            ""
        }
    };
    let n = 1000;
    push(
        "N=1000: ours/incumbent throughput >= 35x",
        get(Subject::Ours, n)
            .zip(get(Subject::Incumbent, n))
            .map(|(o, i)| {
                let (a, b) = (o.provision.per_s, i.provision.per_s);
                (
                    format!("{a:.2}/s vs {b:.2}/s = {:.1}x{}", a / b, capped(i)),
                    a >= 35.0 * b,
                )
            }),
    );
    push(
        "N=1000: ours >= 0.8 of the ceiling (API server's PV-create rate)",
        get(Subject::Ours, n)
            .zip(get(Subject::Ceiling, n))
            .map(|(o, c)| {
                let (a, b) = (o.provision.per_s, c.provision.per_s);
                (format!("{a:.2}/s vs {b:.2}/s = {:.2}", a / b), a >= 0.8 * b)
            }),
    );
    push(
        "N=100: p99 claim to Bound < 1.2 s",
        get(Subject::Ours, 100).map(|o| {
            let p = o.provision.p(99.0);
            (format!("{p:.2} s"), p < 1.2)
        }),
    );
    let idle = |r: &RunResult| r.idle_fp.as_ref().map(|f| f.rss_end_mb);
    push(
        "RSS with 1000 PVs <= 0.6x the incumbent's",
        get(Subject::Ours, n)
            .and_then(idle)
            .zip(get(Subject::Incumbent, n).and_then(idle))
            .map(|(a, b)| {
                (
                    format!("{a:.1} vs {b:.1} MiB = {:.2}x", a / b),
                    a <= 0.6 * b,
                )
            }),
    );
    let fp = |s: Subject| {
        fps.iter()
            .filter(|r| r.n >= 20_000)
            .find(|r| r.subject == Some(s))
    };
    push(
        "20 000 PVs + 20 000 claims: RSS <= 64 MiB and <= 0.2x the incumbent's",
        fp(Subject::Ours).and_then(idle).map(|a| {
            let b = fp(Subject::Incumbent).and_then(idle);
            let m = match b {
                Some(b) => format!("{a:.1} vs {b:.1} MiB = {:.2}x", a / b),
                None => format!("{a:.1} MiB (incumbent not measured)"),
            };
            (m, a <= 64.0 && b.is_none_or(|b| a <= 0.2 * b))
        }),
    );
    push(
        "20 000 PVs: start and restart to ready < 2 s, 0 writes on restart",
        fp(Subject::Ours).and_then(|r| {
            let (c, re, w) = (r.cold_start_s?, r.restart_ready_s?, r.restart_req?.writes);
            Some((
                format!("start {c:.2} s, restart {re:.2} s, {w} writes"),
                c < 2.0 && re < 2.0 && w == 0.0,
            ))
        }),
    );
    let bg = |s: Option<Subject>, deep: bool| {
        big.iter()
            .find(|b| b.subject == s && b.tree.contains("deep") == deep)
    };
    push(
        "one volume of 100 000 files: reclaim within 5x the server's local rm -rf",
        bg(Some(Subject::Ours), false)
            .and_then(|o| o.dir_gone_s.zip(o.pv_gone_s))
            .zip(bg(None, false).and_then(|r| r.dir_gone_s))
            .map(|((d, p), rm)| {
                let t = d.max(p);
                (
                    format!("{t:.2} s vs {rm:.2} s = {:.1}x", t / rm),
                    t <= 5.0 * rm,
                )
            }),
    );
    push(
        "2000-level deep tree reclaimed with bounded RSS (peak within 16 MiB of before)",
        bg(Some(Subject::Ours), true).and_then(|o| {
            let (before, peak) = (o.rss_before_mb?, o.rss_peak_mb?);
            Some((
                format!(
                    "reclaimed in {} s; RSS {before:.1} MiB before, peak {peak:.1} MiB",
                    fmt(o.dir_gone_s.zip(o.pv_gone_s).map(|(a, b)| a.max(b)), 2)
                ),
                o.error.is_none() && peak - before <= 16.0,
            ))
        }),
    );
    let restart: Vec<String> = results
        .iter()
        .filter(|r| r.subject == Some(Subject::Ours))
        .filter_map(|r| r.restart_req.map(|q| format!("{} at N={}", q.writes, r.n)))
        .collect();
    let zero = results
        .iter()
        .filter(|r| r.subject == Some(Subject::Ours))
        .filter_map(|r| r.restart_req)
        .all(|q| q.writes == 0.0);
    push(
        "zero API writes on restart (ours)",
        (!restart.is_empty()).then(|| (restart.join(", "), zero)),
    );
    Value::Array(out)
}

/// Big volumes: one row per subject and tree, the reference `rm -rf` beside them.
fn big_table(big: &[BigResult]) -> String {
    let mut md = String::from(
        "## Big volumes\n\nOne claim per subject; the tree is written into its directory on the server's local disk, then the claim is deleted. Ours removes it over NFSv3 through ganesha; the incumbent removes it on **local disk** (its `/persistentvolumes` is a link to the export's directory here, where in a pod it is a kernel NFS mount): that favours the incumbent. The reference is the server host's own `rm -rf` of the same tree built beside them on the same disk.\n\n| tree | who | directory gone (s) | PV gone (s) | × rm -rf | RSS before / peak during (MiB) | CPU (s) | load average | build (s) |\n|---|---|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for b in big {
        let reference = big
            .iter()
            .find(|r| r.subject.is_none() && r.tree == b.tree)
            .and_then(|r| r.dir_gone_s);
        let t = match (b.dir_gone_s, b.pv_gone_s) {
            (Some(d), Some(p)) => Some(d.max(p)),
            (d, _) => d,
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |\n",
            b.tree,
            b.who(),
            fmt(b.dir_gone_s, 2),
            fmt(b.pv_gone_s, 2),
            if b.subject.is_some() {
                ratio(t, reference)
            } else {
                "1×".into()
            },
            fmt(b.rss_before_mb, 1),
            fmt(b.rss_peak_mb, 1),
            fmt(b.cpu_s, 2),
            b.loadavg,
            fmt(b.build_s, 1),
        ));
    }
    for b in big.iter().filter(|b| b.error.is_some()) {
        md.push_str(&format!(
            "\n**{} {} failed:** {}\n",
            b.who(),
            b.tree,
            b.error.as_deref().unwrap_or("")
        ));
    }
    md.push('\n');
    md
}

fn name(r: &RunResult) -> &'static str {
    r.subject.map(|s| s.name()).unwrap_or("")
}

/// What was run and under which settings.
fn header(meta: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(x) => x.clone(),
        Value::Null => "–".into(),
        other => other.to_string(),
    };
    let inc = &meta["incumbent"];
    let incumbent = if inc.is_null() {
        "not run".to_string()
    } else if inc["tag"].is_null() {
        format!(
            "{} ({}), Go {}",
            s(&inc["binary"]),
            s(&inc["from"]),
            s(&inc["go"])
        )
    } else {
        format!(
            "{} {} (commit {}; {}), built with Go {} by {}",
            s(&inc["name"]),
            s(&inc["tag"]),
            s(&inc["commit"]),
            s(&inc["library"]),
            s(&inc["go"]),
            s(&inc["from"])
        )
    };
    let mut h = format!(
        "- when: {}\n- ours: commit {}\n- incumbent: {incumbent}\n- machine: {} cores; load average at start {}, at end {}; build processes of other work at start: {}\n- kube-controller-manager: --kube-api-qps {}, --kube-api-burst {}\n- N: {}; claim creates in flight: {}; files per directory before reclaim: {}\n- incumbent phases capped at {} s{}\n",
        s(&meta["started_utc"]),
        s(&meta["ours_commit"]),
        meta["cores"],
        s(&meta["loadavg_start"]),
        s(&meta["loadavg_end"]),
        meta["other_load_start"]["build_processes"],
        s(&meta["kcm_api_qps"]),
        s(&meta["kcm_api_burst"]),
        meta["n"],
        meta["claim_create_concurrency"],
        meta["files_per_dir"],
        meta["incumbent_cap_s"],
        match meta["incumbent_max_n"].as_u64() {
            Some(m) => format!("; incumbent run only up to N = {m}"),
            None => String::new(),
        },
    );
    if let Some(n) = meta["footprint_n"].as_u64() {
        h.push_str(&format!(
            "- footprint phase among {n} pre-bound PVs + {n} claims\n"
        ));
    }
    if let Some(note) = meta["note"].as_str() {
        h.push_str(&format!("- note: {note}\n"));
    }
    h.push('\n');
    h
}
