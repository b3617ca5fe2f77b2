//! "Did you mean …?": the known names closest to a mistyped one.

/// Levenshtein distance.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Indices of `known` close to `name` (case-insensitive; containing it, or within a few
/// edits), closest first, at most `n`.
pub fn closest<S: AsRef<str>>(name: &str, known: &[S], n: usize) -> Vec<usize> {
    let want = name.trim().to_lowercase();
    let mut near: Vec<(usize, usize)> = known
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let k = k.as_ref().to_lowercase();
            let d = if k.contains(&want) || want.contains(&k) {
                1
            } else {
                edit_distance(&k, &want)
            };
            (d, i)
        })
        .filter(|&(d, _)| d <= 2.max(want.len() / 4))
        .collect();
    near.sort();
    near.into_iter().take(n).map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn distances_and_suggestions() {
        assert_eq!(super::edit_distance("kitten", "sitting"), 3);
        let known = ["resnet18", "resnet50", "vgg16", "mobilenet_v2"];
        assert_eq!(super::closest("resnet5", &known, 3)[0], 1);
        assert_eq!(super::closest("mobilenetv2", &known, 3), vec![3]);
        assert!(super::closest("zzzzzz", &known, 3).is_empty());
    }
}
