//! "Did you mean" suggestions for near misses.

/// Edit distance (insertions, deletions, substitutions, adjacent transpositions) between two
/// strings, compared case-insensitively.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().flat_map(char::to_lowercase).collect();
    let (n, m) = (a.len(), b.len());
    // Full matrix: the inputs are identifiers, so the cost is trivial and the code obvious.
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[n][m]
}

/// The candidate closest to `name`, if it is close enough to be a plausible typo: at most one
/// edit for short names, up to a third of the length for longer ones.
pub fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if name.is_empty() || name.chars().count() > 64 {
        return None;
    }
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("cont", "count"), 1);
        assert_eq!(edit_distance("wihtin", "within"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("Count", "count"), 0);
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("cont", &["count", "sum"]), Some("count"));
        assert_eq!(did_you_mean("xyz", &["count", "sum"]), None);
        assert_eq!(did_you_mean("dys", &["days", "day", "hours"]), Some("days"));
    }
}
