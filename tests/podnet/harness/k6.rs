//! The browsers: k6 (tests/k6/podnet.js) in the ingress namespace, and what
//! it saw.
//!
//! The script writes a JSON summary (handleSummary) and one line per
//! finished session with every request; the harness reads both and checks
//! that they agree.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ingress::Ingress;
use super::{Clock, Cluster};

/// How the sessions run.
#[derive(Clone, Debug)]
pub enum Run {
    /// Sessions keep starting for this long; the last ones finish.
    For(Duration),
    /// This many sessions in all.
    Sessions(u32),
}

/// The load: VUS browsers, each running one session after another.
#[derive(Clone, Debug)]
pub struct Load {
    pub vus: u32,
    pub requests: u32,
    pub sleep: Duration,
    pub run: Run,
    /// Spread the first sessions over one session's length.
    pub jitter: bool,
}

/// A running k6.
pub struct K6 {
    child: Child,
    summary: PathBuf,
    sessions: PathBuf,
    output: PathBuf,
    deadline: Instant,
}

impl Drop for K6 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request as k6 saw it (times in ms since the epoch).
#[derive(Clone, Debug)]
pub struct Req {
    pub start: u64,
    pub end: u64,
    pub status: u16,
    /// From the app's JSON, when the request succeeded.
    pub pod: Option<String>,
    pub count: Option<u64>,
    pub mark: Option<String>,
    pub error: Option<String>,
}

impl Req {
    pub fn ok(&self) -> bool {
        self.pod.is_some()
    }
}

/// One browser session.
#[derive(Clone, Debug)]
pub struct Session {
    pub vu: u64,
    pub iteration: u64,
    pub requests: Vec<Req>,
}

impl Session {
    fn answered(&self) -> impl Iterator<Item = &Req> {
        self.requests.iter().filter(|r| r.ok())
    }

    /// The pods that served it, in order, each once per stay.
    pub fn stays(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in self.answered() {
            let pod = r.pod.as_deref().unwrap_or_default();
            if out.last() != Some(&pod) {
                out.push(pod);
            }
        }
        out
    }

    pub fn moves(&self) -> usize {
        self.stays().len().saturating_sub(1)
    }

    /// The `stickyd_session` mark of the first response after each move.
    pub fn move_marks(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut prev: Option<&str> = None;
        for r in self.answered() {
            if prev.is_some_and(|p| Some(p) != r.pod.as_deref()) {
                out.push(r.mark.clone().unwrap_or_default());
            }
            prev = r.pod.as_deref();
        }
        out
    }

    pub fn failed(&self) -> impl Iterator<Item = &Req> {
        self.requests.iter().filter(|r| !r.ok())
    }

    pub fn start(&self) -> u64 {
        self.requests.first().map_or(0, |r| r.start)
    }

    pub fn end(&self) -> u64 {
        self.requests.last().map_or(0, |r| r.end)
    }

    pub fn served_by(&self, pod: &str) -> bool {
        self.answered().any(|r| r.pod.as_deref() == Some(pod))
    }

    /// Was any request of it still on its way after `t`?
    pub fn active_after(&self, t: u64) -> bool {
        self.end() > t
    }

    /// Did the app's counter go 1, 2, 3, ... on every pod it stayed on?
    pub fn counter_errors(&self) -> usize {
        let mut errors = 0;
        let mut prev: Option<(&str, u64)> = None;
        for r in self.answered() {
            let pod = r.pod.as_deref().unwrap_or_default();
            let count = r.count.unwrap_or(0);
            let expected = match prev {
                Some((p, c)) if p == pod => c + 1,
                _ => 1,
            };
            if count != expected {
                errors += 1;
            }
            prev = Some((pod, count));
        }
        errors
    }
}

/// What the browsers saw.
pub struct Outcome {
    pub summary: Value,
    pub sessions: Vec<Session>,
}

impl Outcome {
    pub fn requests(&self) -> usize {
        self.sessions.iter().map(|s| s.requests.len()).sum()
    }

    pub fn failed(&self) -> Vec<&Req> {
        self.sessions.iter().flat_map(|s| s.failed()).collect()
    }

    pub fn moved(&self) -> Vec<&Session> {
        self.sessions.iter().filter(|s| s.moves() > 0).collect()
    }

    pub fn counter_errors(&self) -> usize {
        self.sessions.iter().map(Session::counter_errors).sum()
    }

    /// Prints the figures: requests, failures (and when), moves, repins,
    /// per-pod counts, and the cluster's timeline.
    pub fn report(&self, name: &str, c: &Clock) {
        let s = &self.summary;
        let moved = self.moved();
        let twice = moved.iter().filter(|s| s.moves() > 1).count();
        println!("== {name}");
        println!(
            "requests {}, failed {}, sessions {}, sessions moved {} ({} of them more than once), counter errors {}",
            s["requests"], s["failed"], s["sessions"], s["sessions_moved"], twice, s["counter_errors"]
        );
        println!("marks: {}", s["marks"]);
        if let Some(pods) = s["pods"].as_object() {
            for (pod, v) in pods {
                let at = |k: &str| v[k].as_u64().map_or("-".to_string(), |t| format!("{} ms", c.rel(t)));
                println!(
                    "  {pod:<12} {:>6} requests, last at {:>9}, last new session at {:>9}, marks {}",
                    v["requests"],
                    at("last_request_ms"),
                    at("last_new_ms"),
                    v["marks"]
                );
            }
        }
        for s in moved.iter().take(20) {
            println!(
                "  moved: vu {} session {} [{} ms .. {} ms] {} via {:?}",
                s.vu,
                s.iteration,
                c.rel(s.start()),
                c.rel(s.end()),
                s.stays().join(" → "),
                s.move_marks()
            );
        }
        let failed = self.failed();
        for r in failed.iter().take(30) {
            println!(
                "  failed: sent at {} ms, {} ms later: status {} {}",
                c.rel(r.start),
                r.end - r.start,
                r.status,
                r.error.as_deref().unwrap_or("").trim()
            );
        }
        if failed.len() > 30 {
            println!("  ... and {} more failed requests", failed.len() - 30);
        }
        println!("timeline:");
        for line in c.timeline() {
            println!("  {line}");
        }
    }
}

impl Cluster {
    /// Starts k6 in the ingress namespace against HAProxy. `pods` names
    /// every pod that may answer (for the summary's per-pod figures).
    pub fn k6(&self, load: &Load, pods: &[String]) -> K6 {
        let ingress = self.ingress.as_ref().expect("k6 needs the ingress");
        start(ingress, &ingress.url(), &self.dir, &self.clock, load, pods)
    }
}

/// Starts k6 in `ingress`'s namespace against `base_url`, writing into `dir`.
pub fn start(ingress: &Ingress, base_url: &str, dir: &Path, clock: &Clock, load: &Load, pods: &[String]) -> K6 {
    {
        let summary = dir.join("k6-summary.json");
        let sessions = dir.join("k6-sessions.log");
        let output = dir.join("k6-output.log");
        let _ = std::fs::remove_file(&summary);
        let _ = std::fs::remove_file(&sessions);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/k6/podnet.js");
        let mut env = vec![
            ("BASE_URL", base_url.to_string()),
            ("VUS", load.vus.to_string()),
            ("REQUESTS", load.requests.to_string()),
            ("SLEEP", format!("{}", load.sleep.as_secs_f64())),
            ("PODS", pods.join(",")),
            ("SUMMARY", summary.display().to_string()),
            ("JITTER", if load.jitter { "1" } else { "0" }.to_string()),
        ];
        let session_time = load.sleep * load.requests;
        let runs_for = match &load.run {
            Run::For(d) => {
                env.push(("DURATION", format!("{}ms", d.as_millis())));
                *d + session_time
            }
            Run::Sessions(n) => {
                env.push(("ITERATIONS", n.to_string()));
                session_time * n.div_ceil(load.vus)
            }
        };
        let mut cmd = ingress.ns.command("k6");
        cmd.args(["run", "--quiet", "--no-color", "--log-format", "raw"])
            .arg(format!("--log-output=file={}", sessions.display()))
            .env("K6_NO_USAGE_REPORT", "true");
        for (k, v) in &env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        let out = std::fs::File::create(&output).expect("k6 output file");
        let child = cmd
            .arg(script)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("k6 output file"))
            .stderr(out)
            .spawn()
            .expect("start k6");
        clock.event(format!(
            "k6: {} browsers, sessions of {} requests {} ms apart, {:?}",
            load.vus,
            load.requests,
            load.sleep.as_millis(),
            load.run
        ));
        K6 {
            child,
            summary,
            sessions,
            output,
            // Stalled requests wait for the ingress's read timeout.
            deadline: Instant::now() + runs_for + Duration::from_secs(60),
        }
    }
}

impl K6 {
    /// Waits for k6 to finish (bounded), then reads what it wrote.
    pub async fn finish(mut self) -> Outcome {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for k6") {
                break status;
            }
            if Instant::now() > self.deadline {
                let _ = self.child.kill();
                panic!("k6 did not finish in time:\n{}", self.output_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(status.success(), "k6 failed ({status}):\n{}", self.output_text());
        let summary: Value = std::fs::read_to_string(&self.summary)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| panic!("no k6 summary at {}:\n{}", self.summary.display(), self.output_text()));
        let log = std::fs::read_to_string(&self.sessions).unwrap_or_default();
        let sessions: Vec<Session> = log
            .lines()
            .filter_map(|l| l.strip_prefix("podnet-session "))
            .map(|l| parse_session(l).unwrap_or_else(|| panic!("bad session line {l}")))
            .collect();
        let out = Outcome { summary, sessions };
        // The summary and the session records must tell the same story.
        let n = |k: &str| out.summary[k].as_u64().unwrap_or(u64::MAX) as usize;
        assert_eq!(n("sessions"), out.sessions.len(), "sessions: summary vs records");
        assert_eq!(n("requests"), out.requests(), "requests: summary vs records");
        assert_eq!(n("failed"), out.failed().len(), "failed requests: summary vs records");
        assert_eq!(
            n("sessions_moved"),
            out.moved().len(),
            "moved sessions: summary vs records"
        );
        assert_eq!(
            n("counter_errors"),
            out.counter_errors(),
            "counter errors: summary vs records"
        );
        out
    }

    fn output_text(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

fn parse_session(line: &str) -> Option<Session> {
    let v: Value = serde_json::from_str(line).ok()?;
    let requests = v["requests"]
        .as_array()?
        .iter()
        .map(|r| {
            Some(Req {
                start: r[0].as_u64()?,
                end: r[1].as_u64()?,
                status: r[2].as_u64()? as u16,
                pod: r[3].as_str().map(str::to_string),
                count: r[4].as_u64(),
                mark: r[5].as_str().map(str::to_string),
                error: r[6].as_str().map(str::to_string),
            })
        })
        .collect::<Option<Vec<Req>>>()?;
    Some(Session {
        vu: v["vu"].as_u64()?,
        iteration: v["iteration"].as_u64()?,
        requests,
    })
}
