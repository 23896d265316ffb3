//! The documentation against itself and against the code: every relative
//! link of README.md and docs/*.md reaches a file and, with `#anchor`, a
//! heading of it; the README's routing table is numbered as the unit tests
//! of crates/sidecar/src/route.rs; docs/configuration.md lists every variable stickyd reads,
//! with its default; docs/lint.md lists every lint rule with its severity.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The Markdown files whose links are checked: the README, the other root
/// pages and every page of docs/.
fn pages() -> Vec<String> {
    let mut pages = vec![
        "README.md".to_string(),
        "SECURITY.md".to_string(),
        "BENCHMARKS.md".to_string(),
    ];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of a page outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line);
        }
    }
    out
}

/// A line with its inline code spans taken out.
fn without_code(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The link targets of a page: `[text](target)` outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let line = without_code(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to
/// hyphens.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    // A link in a heading reads as its text.
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..]
            .find("](")
            .and_then(|m| rest[open + m..].find(')').map(|c| (m, open + m + c)))
        {
            Some((m, close)) => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + m]);
                rest = &rest[close + 1..];
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings, with GitHub's `-1`, `-2` for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let s = slug(line[hashes..].trim().trim_end_matches('#').trim());
        let n = seen.entry(s.clone()).or_insert(0);
        out.insert(if *n == 0 { s.clone() } else { format!("{s}-{n}") });
        *n += 1;
    }
    out
}

/// `base/rel`, with `.` and `..` resolved, relative to the repository root.
fn resolve(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// Every relative link of every page reaches a file of the repository, and
/// an `#anchor` reaches a heading of the Markdown page it names.
#[test]
fn relative_links_reach_files_and_headings() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        let dir = Path::new(&page).parent().unwrap().to_path_buf();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                PathBuf::from(&page)
            } else {
                match resolve(&dir, path) {
                    Some(f) => f,
                    None => {
                        problems.push(format!("{page}: {target}: leaves the repository"));
                        continue;
                    }
                }
            };
            if !root().join(&file).exists() {
                problems.push(format!("{page}: {target}: no file {}", file.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                if file.extension().is_none_or(|e| e != "md") {
                    problems.push(format!("{page}: {target}: an anchor into a file that is not Markdown"));
                    continue;
                }
                let headings = anchors(&std::fs::read_to_string(root().join(&file)).unwrap());
                if !headings.contains(anchor) {
                    problems.push(format!("{page}: {target}: no heading #{anchor} in {}", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
    assert!(
        checked > 50,
        "only {checked} relative links found: the link parser is broken"
    );
}

/// Every page of docs/ is linked from the README.
#[test]
fn every_doc_is_linked_from_the_readme() {
    let linked: BTreeSet<String> = links(&read("README.md"))
        .into_iter()
        .map(|t| t.split('#').next().unwrap().to_string())
        .collect();
    for page in pages().into_iter().filter(|p| p.starts_with("docs/")) {
        assert!(linked.contains(&page), "README.md does not link {page}");
    }
}

/// The link checker itself: anchors as GitHub makes them, and a broken link
/// found as broken.
#[test]
fn the_link_checker_finds_what_github_would() {
    assert_eq!(
        slug("`stickyd inject` or `stickyd injector`: which to choose"),
        "stickyd-inject-or-stickyd-injector-which-to-choose"
    );
    assert_eq!(slug("0. What you need"), "0-what-you-need");
    assert_eq!(
        slug("GEP-1619 field → stickyd setting"),
        "gep-1619-field--stickyd-setting"
    );
    assert_eq!(
        slug("Affinity modes: the header, and the app's own cookie"),
        "affinity-modes-the-header-and-the-apps-own-cookie"
    );
    assert_eq!(slug("See [the guide](x.md) here"), "see-the-guide-here");
    let page = "# Title\n\n## Part\n\n```\n# not a heading\n```\n\n## Part\n\nA [link](other.md#part) and `[code](not-a-link.md)`.\n";
    assert_eq!(
        anchors(page),
        ["title", "part", "part-1"].into_iter().map(String::from).collect()
    );
    assert_eq!(links(page), vec!["other.md#part".to_string()]);
    assert_eq!(
        resolve(Path::new("docs"), "../README.md"),
        Some(PathBuf::from("README.md"))
    );
    assert_eq!(resolve(Path::new(""), "../outside.md"), None);
}

/// The rows of the first table after `heading` in `text`, as cells.
fn table_after(text: &str, heading: &str) -> Vec<Vec<String>> {
    let start = text.find(heading).unwrap_or_else(|| panic!("no {heading:?}"));
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text[start..].lines() {
        if line.starts_with('|') {
            in_table = true;
            let cells: Vec<String> = line
                .trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            if !cells[0].starts_with("---") && !cells[0].starts_with(":-") {
                rows.push(cells);
            }
        } else if in_table {
            break;
        }
    }
    rows.remove(0); // the header
    rows
}

/// The README's routing table and the unit tests of crates/sidecar/src/route.rs mirror each
/// other row for row: rows numbered 1, 2, … and each with a `rowNN_` test,
/// in the same order, except the rows the README names as tested on real
/// processes.
#[test]
fn the_routing_table_rows_are_the_route_tests() {
    let readme = read("README.md");
    let rows: Vec<u32> = table_after(&readme, "## The routing table")
        .iter()
        .map(|r| r[0].parse().unwrap_or_else(|_| panic!("row number {:?}", r[0])))
        .collect();
    assert_eq!(
        rows,
        (1..=rows.len() as u32).collect::<Vec<_>>(),
        "rows numbered 1, 2, …"
    );

    let route = read("crates/sidecar/src/route.rs");
    let tests: Vec<u32> = route
        .split("fn row")
        .skip(1)
        .filter_map(|s| s.split('_').next()?.parse().ok())
        .collect();
    assert!(
        tests.windows(2).all(|w| w[0] < w[1]),
        "route.rs's row tests in table order: {tests:?}"
    );
    for t in &tests {
        assert!(
            rows.contains(t),
            "route.rs tests row {t}, which the README's table does not have"
        );
    }
    let section = readme[readme.find("## The routing table").unwrap()..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let untested: Vec<u32> = rows.iter().copied().filter(|r| !tests.contains(r)).collect();
    for r in &untested {
        assert!(
            section.contains(&format!("row {r} is tested on real processes")),
            "row {r} has no unit test in crates/sidecar/src/route.rs, and the README does not say where it is tested"
        );
    }
    assert!(untested.len() <= 1, "rows without a unit test: {untested:?}");
}

/// docs/configuration.md has a row for every variable `stickyd run` reads
/// (and none other), with the default the parser uses.
#[test]
fn the_variables_table_is_the_parsers() {
    let doc = read("docs/configuration.md");
    let mut documented: BTreeMap<String, String> = BTreeMap::new();
    for row in table_after(&doc, "| variable | default | meaning |") {
        let names: Vec<&str> = row[0].split(" / ").collect();
        let defaults: Vec<&str> = row[1].split(" / ").collect();
        for (i, name) in names.iter().enumerate() {
            let default = if defaults.len() == names.len() {
                defaults[i]
            } else {
                row[1].as_str()
            };
            assert!(
                documented.insert(name.to_string(), default.to_string()).is_none(),
                "{name} twice"
            );
        }
    }
    let known: BTreeSet<&str> = stickyd::config::VARIABLES.iter().map(|(n, _)| *n).collect();
    for name in documented.keys() {
        assert!(
            known.contains(name.as_str()),
            "docs/configuration.md documents {name}, which stickyd does not read"
        );
    }
    for (name, default) in stickyd::config::VARIABLES {
        let doc_default = documented
            .get(*name)
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for {name}"));
        if let Some(d) = default {
            assert_eq!(doc_default, d, "the documented default of {name}");
        }
    }
}

/// docs/lint.md's table lists every rule, in order, with its severity.
#[test]
fn the_lint_table_is_the_rules() {
    let doc = read("docs/lint.md");
    let table: Vec<(String, String)> = table_after(&doc, "| id | severity | what it catches |")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let rules: Vec<(String, String)> = stickyd::lint::RULES
        .iter()
        .map(|r| {
            let sev = if r.warns_too {
                format!("{}, warning", r.severity)
            } else {
                r.severity.to_string()
            };
            (r.id.to_string(), sev)
        })
        .collect();
    assert_eq!(table, rules);
}
