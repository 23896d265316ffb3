//! `stickyd lint` run as a user would: the real binary on fixture files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lint")
        .join(name)
}

fn lint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .arg("lint")
        .args(args)
        .current_dir(fixture(""))
        .output()
        .expect("stickyd runs")
}

fn json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = lint(&all);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().expect("exit code"), v)
}

/// `(rule, line)` of each finding, in output order.
fn findings(v: &serde_json::Value) -> Vec<(String, u64)> {
    v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| (f["rule"].as_str().unwrap().to_string(), f["line"].as_u64().unwrap()))
        .collect()
}

fn expect(file: &str, exit: i32, want: &[(&str, u64)]) {
    let (code, v) = json(&[file]);
    let got = findings(&v);
    let want: Vec<(String, u64)> = want.iter().map(|(r, l)| (r.to_string(), *l)).collect();
    assert_eq!(got, want, "{file}: {v:#}");
    assert_eq!(code, exit, "{file}: exit code");
    for f in v["findings"].as_array().unwrap() {
        assert_eq!(f["file"], file);
        let msg = f["message"].as_str().unwrap();
        assert!(msg.len() > 40 && msg.ends_with('.'), "a sentence: {msg}");
        assert!(!f["fix"].as_str().unwrap().is_empty());
        let sev = f["severity"].as_str().unwrap();
        assert!(sev == "error" || sev == "warning");
    }
}

#[test]
fn the_story_reports_both_bugs_with_their_fixes() {
    let out = lint(&["story.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    // Bug 1: the regex path without session-cookie-path, at the path's line.
    assert!(
        text.contains("story.yaml:21: error[SD001] Ingress/mysite: path \"/mysite(/|$)(.*)\""),
        "{text}"
    );
    assert!(
        text.contains("fix: add the annotation nginx.ingress.kubernetes.io/session-cookie-path: \"/mysite\""),
        "{text}"
    );
    // Bug 2: the ExternalName Service behind cookie affinity.
    assert!(text.contains("story.yaml:73: error[SD002]"), "{text}");
    assert!(
        text.contains("is an ExternalName Service (-> mysvc.otherns.svc.cluster.local)"),
        "{text}"
    );
    assert!(
        text.contains("fix: move this Ingress into namespace \"otherns\" and point it at Service \"mysvc\" directly"),
        "{text}"
    );
    assert!(text.contains("stickyd inject"), "{text}");
    // The cross-namespace name, and the post's msvc-proxy / mysvc-proxy mismatch.
    assert!(text.contains("story.yaml:41: error[SD003]"), "{text}");
    assert!(text.contains("story.yaml:73: warning[SD010]"), "{text}");
    assert!(
        text.contains("\"msvc-proxy\" is not among the Services checked, but \"mysvc-proxy\" is"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("3 errors, 4 warnings in 4 objects"), "{text}");
}

#[test]
fn story_findings_and_lines() {
    expect(
        "story.yaml",
        1,
        &[
            ("SD011", 8),
            ("SD001", 21),
            ("SD011", 30),
            ("SD003", 41),
            ("SD011", 62),
            ("SD002", 73),
            ("SD010", 73),
        ],
    );
}

#[test]
fn a_correct_stack_is_clean() {
    let out = lint(&["clean.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "no problems found in 6 objects\n"
    );
}

#[test]
fn each_rule_fixture() {
    expect("sd001-use-regex.yaml", 1, &[("SD001", 21)]);
    expect("sd001-regex-cookie-path.yaml", 1, &[("SD001", 11)]);
    expect("sd002-externalname.yaml", 1, &[("SD002", 28)]);
    expect("sd003-dotted-service.yaml", 1, &[("SD003", 16)]);
    expect("sd004-samesite-none.yaml", 1, &[("SD004", 12)]);
    expect("sd005-balanced.yaml", 0, &[("SD005", 9)]);
    expect("sd006-clientip.yaml", 0, &[("SD006", 20)]);
    expect("sd007-bypass.yaml", 1, &[("SD007", 41)]);
    expect("sd007-watched-service-misses-sidecar.yaml", 1, &[("SD007", 38)]);
    expect("sd008-no-rbac.yaml", 1, &[("SD008", 58)]);
    expect("sd008-role-without-watch.yaml", 1, &[("SD008", 58)]);
    expect("sd009-no-service.yaml", 1, &[("SD009", 60)]);
    expect("sd009-regex-cookie-path.yaml", 1, &[("SD009", 77)]);
    expect("sd009-secret-not-mounted.yaml", 1, &[("SD009", 75)]);
    expect("sd010-typo.yaml", 0, &[("SD010", 24)]);
    expect("sd011-no-affinity.yaml", 0, &[("SD011", 7)]);
    expect("sd014-same-cookie.yaml", 1, &[("SD014", 23)]);
    expect("sd015-httproute.yaml", 0, &[("SD015", 107), ("SD019", 107)]);
    expect(
        "sd019-route-contradicts-sidecar.yaml",
        1,
        &[
            ("SD019", 81),
            ("SD019", 160),
            ("SD019", 241),
            ("SD019", 321),
            ("SD019", 400),
        ],
    );
    expect("sd016-unsigned.yaml", 0, &[("SD016", 18)]);
    expect(
        "sd017-drain-token.yaml",
        1,
        &[("SD017", 36), ("SD017", 73), ("SD017", 110), ("SD017", 147)],
    );
    expect(
        "sd018-drain-max.yaml",
        0,
        &[("SD018", 36), ("SD018", 74), ("SD018", 110)],
    );
    expect(
        "sd012-grace-too-short.yaml",
        1,
        &[
            ("SD012", 17),
            ("SD012", 75),
            ("SD012", 91),
            ("SD012", 128),
            ("SD012", 166),
            ("SD012", 224),
        ],
    );
    expect(
        "sd013-drain-unreachable.yaml",
        1,
        &[
            ("SD013", 38),
            ("SD013", 75),
            ("SD013", 115),
            ("SD013", 156),
            ("SD013", 187),
            ("SD013", 232),
            ("SD013", 270),
        ],
    );
    expect(
        "sd013-no-drain.yaml",
        0,
        &[
            ("SD013", 31),
            ("SD013", 71),
            ("SD013", 106),
            ("SD013", 142),
            ("SD013", 174),
        ],
    );
}

/// `(object, severity, message, fix)` of each finding of a fixture, in output order.
fn details(file: &str) -> Vec<(String, String, String, String)> {
    let (_, v) = json(&[file]);
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap().to_string();
            (s("object"), s("severity"), s("message"), s("fix"))
        })
        .collect()
}

/// Each finding is of `Deployment/shop/NAME` with `severity`, its message
/// holding `why` and its fix `how`, for `(NAME, why, how)` in order.
fn check_details(d: &[(String, String, String, String)], severity: &str, want: &[(&str, &str, &str)]) {
    assert_eq!(d.len(), want.len(), "{d:#?}");
    for ((object, sev, message, fix), (name, why, how)) in d.iter().zip(want) {
        assert_eq!(object, &format!("Deployment/shop/{name}"));
        assert_eq!(sev, severity, "{name}");
        assert!(message.contains(why), "{name}: {message}");
        assert!(fix.contains(how), "{name}: {fix}");
    }
}

#[test]
fn the_grace_period_must_fit_the_drain_then_the_sidecar() {
    let d = details("sd012-grace-too-short.yaml");
    let got: Vec<(&str, &str)> = d.iter().map(|(o, s, ..)| (o.as_str(), s.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("Deployment/shop/short", "error"),
            ("Deployment/shop/unset", "error"),
            ("Deployment/shop/tight", "warning"),
            ("Deployment/shop/slow-sidecar", "warning"),
            ("Deployment/shop/exec", "error"),
            ("Deployment/shop/short-max", "warning"),
        ]
    );
    let fix = |i: usize| d[i].3.as_str();
    assert_eq!(
        fix(0),
        "set terminationGracePeriodSeconds to at least 335 (max 300s + STICKYD_DRAIN_SECONDS 5s + \
         STICKYD_DRAIN_TIMEOUT 30s)"
    );
    assert!(
        d[0].2.contains("is 60s, shorter than the drain's max=300s"),
        "{}",
        d[0].2
    );
    assert!(d[1].2.contains("not set, so Kubernetes allows 30s"), "{}", d[1].2);
    assert!(d[2].2.contains("stickyd is killed mid-drain"), "{}", d[2].2);
    // The sidecar's own settings count: STICKYD_DRAIN_TIMEOUT=60.
    assert!(fix(3).contains("at least 365 ("), "{}", fix(3));
    // max=2m from an exec hook's drain call.
    assert!(fix(4).contains("at least 155 (max 120s "), "{}", fix(4));
    assert!(fix(5).contains("at least 55 (max 20s "), "{}", fix(5));
}

#[test]
fn a_drain_the_kubelet_cannot_reach_is_an_error_that_says_why() {
    let d = details("sd013-drain-unreachable.yaml");
    let want = [
        (
            "named-port",
            "looks up only among the ports of container \"app\"",
            "give the port as a number: port: 9090",
        ),
        (
            "wrong-port",
            "on port 9091, but stickyd's admin listener is on port 9090",
            "set the preStop httpGet port to 9090",
        ),
        ("host", "sets host \"127.0.0.1\"", "remove host"),
        ("https", "scheme HTTPS", "remove scheme"),
        (
            "loopback",
            "loopback address 127.0.0.1:9090",
            "set STICKYD_ADMIN_LISTEN to 0.0.0.0:9090",
        ),
        // The drain's own words for the bad query.
        (
            "bad-query",
            "idle=\"soon\" is not a duration",
            "/drain?idle=10s&max=300s",
        ),
        (
            "exec-port",
            "command of container \"app\" calls the drain on port 9091",
            "call the drain on port 9090",
        ),
    ];
    check_details(&d, "error", &want);
    let (_, v) = json(&["sd013-drain-unreachable.yaml"]);
    let expected = stickyd::drain::DrainParams::parse_path("/drain?idle=soon")
        .unwrap()
        .unwrap_err();
    assert!(v["findings"][5]["message"].as_str().unwrap().contains(&expected));
}

#[test]
fn an_app_without_the_drain_is_a_warning() {
    let d = details("sd013-no-drain.yaml");
    let want = [
        (
            "none",
            "container \"app\" has no preStop hook calling stickyd's drain",
            "add lifecycle: {preStop: {httpGet: {path: \"/drain?idle=10s&max=300s\", port: 9090}}}",
        ),
        (
            "sleep",
            "sleeps instead of calling stickyd's drain",
            "replace the sleep with httpGet",
        ),
        (
            "own-exec",
            "a hook of its own (exec)",
            "call GET http://127.0.0.1:9090/drain?idle=10s&max=300s",
        ),
        ("own-get", "a hook of its own (httpGet)", "or replace it with httpGet"),
        ("unclear", "container \"web\" has no preStop", "to container \"web\""),
    ];
    check_details(&d, "warning", &want);
    for (_, _, _, fix) in &d {
        assert!(fix.contains("terminationGracePeriodSeconds of at least 335"), "{fix}");
    }
}

#[test]
fn a_sidecar_without_a_key_is_a_warning_unless_the_key_may_come_from_elsewhere() {
    let d = details("sd016-unsigned.yaml");
    check_details(
        &d,
        "warning",
        &[(
            "unsigned",
            "hop markers between its peers are unsigned: any client can pin itself to any pod",
            "kubectl create secret generic stickyd-shop --from-literal=key=$(openssl rand -hex 32)",
        )],
    );
    // The same sidecar with a key file mounted from a Secret is clean.
    let src = std::fs::read_to_string(fixture("sd016-unsigned.yaml")).unwrap();
    let token = "        - {name: STICKYD_DRAIN_TOKEN, value: fixture-drain-token-0123456789abcdef}\n";
    let keyed = src.replacen(
        token,
        &format!(
            "{token}        - {{name: STICKYD_COOKIE_SECRET_FILE, value: /etc/stickyd/secret/key}}\n        \
             volumeMounts: [{{name: stickyd-secret, mountPath: /etc/stickyd/secret, readOnly: true}}]\n"
        ),
        1,
    );
    assert_ne!(keyed, src);
    let (code, v) = lint_stdin(&keyed);
    assert_eq!((code, findings(&v)), (0, vec![]), "{v:#}");
}

#[test]
fn a_drain_prestop_without_the_sidecars_token_is_an_error() {
    let d = details("sd017-drain-token.yaml");
    check_details(
        &d,
        "error",
        &[
            (
                "no-token",
                "the stickyd sidecar has no STICKYD_DRAIN_TOKEN, which such a call must carry, so stickyd answers \
                 the kubelet's call 403",
                "set STICKYD_DRAIN_TOKEN on the stickyd container to a random token (openssl rand -hex 32)",
            ),
            (
                "no-header",
                "sends no Authorization header",
                "add httpHeaders: [{name: Authorization, value: \"Bearer TOKEN\"}] to this httpGet",
            ),
            (
                "other-token",
                "does not carry the sidecar's STICKYD_DRAIN_TOKEN",
                "set the header's value to \"Bearer \" followed by the STICKYD_DRAIN_TOKEN",
            ),
            (
                "from-secret-no-header",
                "sends no Authorization header",
                "with the stickyd container's STICKYD_DRAIN_TOKEN as TOKEN",
            ),
        ],
    );
    // Neither the token nor the header's wrong value is printed.
    let out = lint(&["sd017-drain-token.yaml"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in ["fixture-drain-token-0123456789abcdef", "not-the-sidecars-token-at-all"] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[test]
fn a_drain_longer_than_the_sidecar_allows_is_a_warning() {
    let d = details("sd018-drain-max.yaml");
    check_details(
        &d,
        "warning",
        &[
            (
                "long-max",
                "the drain's max=600s in the preStop of container \"app\" is above the sidecar's STICKYD_DRAIN_MAX \
                 (300s), so stickyd cuts it to that",
                "set STICKYD_DRAIN_MAX on the stickyd container to 600s with terminationGracePeriodSeconds of at \
                 least 635",
            ),
            (
                "both-over",
                "idle=45s and max=60s in the preStop of container \"app\" are above the sidecar's STICKYD_DRAIN_MAX \
                 (30s)",
                "or ask for at most 30s in this hook",
            ),
            ("exec-over", "the drain's max=600s", "to 600s"),
        ],
    );
}

#[test]
fn drains_that_reach_stickyd_in_time_are_clean() {
    let (code, v) = json(&["ok-drain.yaml"]);
    assert_eq!((code, findings(&v)), (0, vec![]), "{v:#}");
    assert_eq!(v["objects"], 9);
}

/// Lints YAML given on standard input; returns the exit code and the findings.
fn lint_stdin(yaml: &str) -> (i32, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["lint", "--format", "json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap(), serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn the_clean_stack_turns_dirty_without_its_drain_or_its_grace_period() {
    let clean = std::fs::read_to_string(fixture("clean.yaml")).unwrap();
    let hook = "        lifecycle:\n          preStop:\n            httpGet: {path: \"/drain?idle=10s&max=300s\", port: 9090, \
                httpHeaders: [{name: Authorization, value: \"Bearer fixture-drain-token-0123456789abcdef\"}]}\n";
    let grace = "      terminationGracePeriodSeconds: 335\n";
    assert!(clean.contains(hook) && clean.contains(grace));

    // No preStop: the warning, at the app container; the grace period no longer matters.
    let (code, v) = lint_stdin(&clean.replace(hook, ""));
    assert_eq!((code, findings(&v)), (0, vec![("SD013".to_string(), 81)]), "{v:#}");
    // The base's old preStop sleep.
    let sleep = clean.replace(
        hook,
        "        lifecycle:\n          preStop:\n            sleep: {seconds: 5}\n",
    );
    let (code, v) = lint_stdin(&sleep);
    assert_eq!((code, findings(&v)), (0, vec![("SD013".to_string(), 87)]), "{v:#}");
    // The drain on the sidecar's named port.
    let named = clean.replace("port: 9090,", "port: stickyd-admin,");
    assert_ne!(named, clean);
    let (code, v) = lint_stdin(&named);
    assert_eq!((code, findings(&v)), (1, vec![("SD013".to_string(), 87)]), "{v:#}");
    // The base's old grace period, 45s.
    let (code, v) = lint_stdin(&clean.replace(grace, "      terminationGracePeriodSeconds: 45\n"));
    assert_eq!((code, findings(&v)), (1, vec![("SD012".to_string(), 91)]), "{v:#}");
    assert_eq!(v["findings"][0]["severity"], "error");
    // 300s covers the drain but not stickyd's own after it.
    let (code, v) = lint_stdin(&clean.replace(grace, "      terminationGracePeriodSeconds: 300\n"));
    assert_eq!((code, findings(&v)), (0, vec![("SD012".to_string(), 91)]), "{v:#}");
    assert_eq!(v["findings"][0]["severity"], "warning");
}

#[test]
fn every_rule_has_a_fixture_that_triggers_it() {
    let mut warnings = Vec::new();
    for rule in stickyd::lint::RULES {
        let prefix = rule.id.to_ascii_lowercase();
        let files: Vec<String> = std::fs::read_dir(fixture(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(!files.is_empty(), "no fixture for {}", rule.id);
        for f in files {
            let (_, v) = json(&[&f]);
            let hits: Vec<_> = v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["rule"] == rule.id)
                .collect();
            assert!(!hits.is_empty(), "{f} does not trigger {}", rule.id);
            let sev = if rule.severity == stickyd::lint::Severity::Error {
                "error"
            } else {
                "warning"
            };
            // A rule that also warns reports its lesser case as a warning.
            assert!(
                hits.iter()
                    .all(|h| h["severity"] == sev || (rule.warns_too && h["severity"] == "warning")),
                "{f}: {hits:?}"
            );
            warnings.extend(hits.iter().filter(|h| h["severity"] == "warning").map(|_| rule.id));
        }
        if rule.warns_too {
            assert!(
                warnings.contains(&rule.id),
                "no fixture shows the warning of {}",
                rule.id
            );
        }
    }
}

#[test]
fn messages_explain_and_fixes_are_specific() {
    let (_, v) = json(&["sd009-regex-cookie-path.yaml"]);
    let f = &v["findings"][0];
    assert!(
        f["message"].as_str().unwrap().contains("never send the cookie back"),
        "{f}"
    );
    assert!(f["fix"].as_str().unwrap().contains("STICKYD_COOKIE_PATH"), "{f}");
    let (_, v) = json(&["sd007-bypass.yaml"]);
    assert_eq!(v["findings"][0]["fix"], "set targetPort: stickyd on this Service port");
    let (_, v) = json(&["sd004-samesite-none.yaml"]);
    assert!(v["findings"][0]["fix"]
        .as_str()
        .unwrap()
        .contains("session-cookie-secure: \"true\""));
    let (_, v) = json(&["sd008-role-without-watch.yaml"]);
    assert!(
        v["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not granted watch"),
        "{v}"
    );
}

#[test]
fn objects_are_related_across_files() {
    // The ExternalName Service and the Ingress in different files.
    let dir = std::env::temp_dir().join(format!("stickyd-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::fs::read_to_string(fixture("sd002-externalname.yaml")).unwrap();
    let (svc, ing) = src.split_once("\n---\n").unwrap();
    let (a, b) = (dir.join("svc.yaml"), dir.join("ing.yaml"));
    std::fs::write(&a, svc).unwrap();
    std::fs::write(&b, ing).unwrap();
    let (code, v) = json(&[a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(v["findings"][0]["rule"], "SD002");
    assert_eq!(v["findings"][0]["file"], b.to_str().unwrap());
    // The Ingress alone has nothing to relate its backend to.
    let (code, v) = json(&[b.to_str().unwrap()]);
    assert_eq!((code, v["findings"].as_array().unwrap().len()), (0, 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_or_unparsable_input_exits_2() {
    let out = lint(&["does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does-not-exist.yaml: cannot read"));

    let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["lint", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"kind: Service\n---\nkind: Ingress\nmetadata: {name: [x}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("-:4: cannot parse YAML: document 2, line 4"), "{text}");
}

#[test]
fn json_report_has_totals() {
    let (code, v) = json(&["story.yaml", "clean.yaml"]);
    assert_eq!(code, 1);
    assert_eq!(v["errors"], 3);
    assert_eq!(v["warnings"], 4);
    assert_eq!(v["objects"], 10);
    assert_eq!(v["input_errors"].as_array().unwrap().len(), 0);
}

#[test]
fn externalname_is_fine_when_stickyd_runs_behind_it() {
    let (code, v) = json(&["ok-externalname-to-stickyd.yaml"]);
    assert_eq!((code, findings(&v)), (0, vec![]), "{v:#}");
    // The same manifests without the sidecar lose stickiness.
    let src = std::fs::read_to_string(fixture("ok-externalname-to-stickyd.yaml")).unwrap();
    let without = src.replace(
        "      - name: stickyd\n        image: stickyd:0.1.0\n",
        "      - name: helper\n        image: example/helper:1\n",
    );
    assert_ne!(src, without);
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickyd"))
        .args(["lint", "--format", "json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), without.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(findings(&v), vec![("SD002".to_string(), 29)], "{v:#}");
    assert_eq!(out.status.code(), Some(1));
}

/// Whether `haystack` holds the lines of `snippet`, in a row, all shifted by the same indentation.
fn contains_indented(haystack: &str, snippet: &str) -> bool {
    (0..12).any(|n| {
        let pad = " ".repeat(n);
        let shifted: String = snippet.lines().map(|l| format!("{pad}{l}\n")).collect();
        haystack.contains(&shifted)
    })
}

#[test]
fn the_story_fixture_holds_the_posts_snippets_verbatim() {
    let story = std::fs::read_to_string(fixture("story.yaml")).unwrap();
    let snippets = [
        concat!(
            "metadata:\n",
            "  annotations:\n",
            "    kubernetes.io/ingress.class: nginx\n",
            "    nginx.ingress.kubernetes.io/affinity-mode: persistent\n",
            "    nginx.ingress.kubernetes.io/session-cookie-name: lbsticky\n",
            "    nginx.ingress.kubernetes.io/session-cookie-expires: \"172800\"\n",
            "    nginx.ingress.kubernetes.io/session-cookie-max-age: \"172800\"    \n",
        ),
        "paths:\n- backend:\n    serviceName: mysvc\n    servicePort: http\n  path: /mysite(/|$)(.*)\n",
        "http:\npaths:\n- backend:\n    serviceName: mysvc.otherns.svc.cluster.local\n    servicePort: http\n",
        concat!(
            "apiVersion: v1\n",
            "kind: Service\n",
            "metadata:\n",
            "  name: mysvc-proxy\n",
            "  namespace: \"mismo-namespace-que-el-ingress\"\n",
            "spec:\n",
            "  type: ExternalName\n",
            "  externalName: mysvc.otherns.svc.cluster.local\n",
            "  ports:\n",
            "  - port: 80  \n",
        ),
        "http:\npaths:\n- backend:\n    serviceName: msvc-proxy\n    servicePort: 80\n",
    ];
    for s in snippets {
        // The annotations sit under `metadata:` after `name:`, and `http:` opens a rule
        // item (`- http:`) in a whole Ingress: the lines after them are checked.
        let s = s.strip_prefix("metadata:\n").unwrap_or(s);
        let s = s.strip_prefix("http:\n").unwrap_or(s);
        assert!(contains_indented(&story, s), "story.yaml lacks the snippet:\n{s}");
    }
}

/// lint judges the manifest, not the machine it runs on: the hostname, the
/// files the manifest names and the cgroups there change nothing.
#[test]
fn the_findings_do_not_depend_on_the_machine() {
    let dir = std::env::temp_dir().join(format!("stickyd-lint-machine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let peers = dir.join("peers");
    let key = dir.join("key");
    // No STICKYD_POD_NAME (the pod's HOSTNAME is its name), an endpoints file
    // and a key file that live on the pod's disk.
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: n}}\nspec:\n  template:\n\
         \x20   metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n\
         \x20     - name: stickyd\n        image: stickyd:1\n        env:\n\
         \x20       - {{name: STICKYD_ENDPOINTS, value: 'file:{}'}}\n\
         \x20       - {{name: STICKYD_COOKIE_SECRET_FILE, value: '{}'}}\n\
         \x20       volumeMounts:\n        - {{name: s, mountPath: '{}'}}\n",
        peers.display(),
        key.display(),
        dir.display()
    );
    let path = dir.join("m.yaml");
    std::fs::write(&path, &manifest).unwrap();
    let run = |hostname: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stickyd"));
        cmd.args(["lint", "--format", "json"]).arg(&path).env_remove("HOSTNAME");
        if let Some(h) = hostname {
            cmd.env("HOSTNAME", h);
        }
        // A memory limit the sidecar would read is not lint's either.
        cmd.env("STICKYD_MEMORY_LIMIT", "1");
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // The files missing here, and present but invalid.
    let missing = run(Some("web-0"));
    assert_eq!(missing.0, Some(0), "{}", missing.1);
    std::fs::write(&peers, "not a peer list\n").unwrap();
    std::fs::write(&key, "short\n").unwrap();
    for hostname in [Some("web-0"), Some("Not_A_Pod_Name"), Some(""), None] {
        assert_eq!(run(hostname), missing, "HOSTNAME={hostname:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The SD019 findings of a YAML stream: `(severity, message)`.
fn sd019(yaml: &str) -> Vec<(String, String)> {
    let (_, v) = lint_stdin(yaml);
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "SD019")
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_route_that_says_where_the_sidecar_looks_is_consistent() {
    let src = std::fs::read_to_string(fixture("sd019-route-contradicts-sidecar.yaml")).unwrap();
    let case = |name: &str| {
        let docs: Vec<&str> = src.split("---\n").collect();
        let i = docs
            .iter()
            .position(|d| d.contains(&format!("kind: Deployment\nmetadata:\n  name: {name}\n")))
            .unwrap();
        // The Service, the Deployment and the route of one case, and the RBAC.
        let mut yaml = docs[i - 1..=i + 1].join("---\n");
        for d in &docs[docs.len() - 3..] {
            yaml.push_str("---\n");
            yaml.push_str(d);
        }
        yaml
    };
    let token = "        - {name: STICKYD_DRAIN_TOKEN";
    let with_env = |yaml: &str, env: &str| yaml.replace(token, &format!("{env}{token}"));
    let (browser, api, grpc) = (case("browser"), case("api"), case("grpc"));
    assert_eq!(sd019(&browser).len(), 1, "{browser}");
    // Both modes at once read the cookie and the header: only the cookie's name differs.
    let both = sd019(&browser.replace("value: \"header\"", "value: \"cookie,header\""));
    assert_eq!(both.len(), 1, "{both:?}");
    assert_eq!(both[0].0, "warning", "{both:?}");
    let header_mode = concat!(
        "        - {name: STICKYD_AFFINITY, value: header}\n",
        "        - {name: STICKYD_AFFINITY_HEADER, value: x-session}\n",
    );
    assert_eq!(sd019(&api).len(), 1);
    assert_eq!(sd019(&with_env(&api, header_mode)), vec![]);
    // The header name is compared as HTTP does, whatever its case.
    assert_eq!(sd019(&grpc.replace("x-affinity", "X-Session")), vec![]);
    // The app's own header (app-header, STICKYD_APP_HEADER), and the app's own cookie.
    let mcp = grpc.replace("value: \"header\"", "value: \"app-header\"").replace(
        "STICKYD_AFFINITY_HEADER, value: \"x-affinity\"",
        "STICKYD_APP_HEADER, value: \"Mcp-Session-Id\"",
    );
    assert_eq!(sd019(&mcp.replace("name: X-Session", "name: Mcp-Session-Id")), vec![]);
    let other = sd019(&mcp);
    assert_eq!(other.len(), 1, "{other:?}");
    assert!(
        other[0].1.contains("reads \"Mcp-Session-Id\" (STICKYD_APP_HEADER)"),
        "{other:?}"
    );
    let app_cookie = browser.replace(
        "STICKYD_AFFINITY, value: \"header\"}",
        "STICKYD_AFFINITY, value: \"app-cookie\"}\n        - {name: STICKYD_APP_COOKIE, value: browser-session}",
    );
    assert_eq!(sd019(&app_cookie), vec![]);
    // Cookie names are case-sensitive.
    assert_eq!(
        sd019(&app_cookie.replace("value: browser-session", "value: Browser-Session")).len(),
        1
    );
    let jsessionid = sd019(&app_cookie.replace("value: browser-session", "value: JSESSIONID"));
    assert_eq!(jsessionid.len(), 1, "{jsessionid:?}");
    assert_eq!(jsessionid[0].0, "warning");
    assert!(jsessionid[0].1.contains("STICKYD_APP_COOKIE"), "{jsessionid:?}");
    // A header mode on a cookie route is SD019's alone, not SD015's as well.
    let (_, v) = lint_stdin(&browser);
    assert!(!v.to_string().contains("SD015"), "{v:#}");
}
