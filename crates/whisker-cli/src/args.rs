//! Parse-time validation of numeric arguments: every value outside its valid range is refused
//! by the argument parser, with a message that says the range (exit code 2, nothing run).

/// A number, or a fraction such as `4/255`.
fn number(s: &str) -> Result<f64, String> {
    let v = match s.split_once('/') {
        Some((a, b)) => {
            let a: f64 = a
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a number"))?;
            let b: f64 = b
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a number"))?;
            if b == 0.0 {
                return Err(format!("`{s}` divides by zero"));
            }
            a / b
        }
        None => s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))?,
    };
    if !v.is_finite() {
        return Err(format!("`{s}` is not a finite number"));
    }
    Ok(v)
}

/// A number as a person reads it: plain when of ordinary size, else in scientific notation
/// (never 309 digits).
pub fn show(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e7).contains(&a) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// A whole number in `lo..=hi`: every count a flag takes has a range, so that no value can
/// exhaust memory, threads or time before anything checks it.
pub fn whole(
    lo: usize,
    hi: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let v: usize = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a whole number from {lo} to {hi}"))?;
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{v} is outside {lo}..={hi}"))
        }
    }
}

/// A finite number in `(lo, hi]` (`lo` excluded: a rate or scale that must be above it) or
/// `[lo, hi]` (`lo_included`); fractions such as `4/255` are accepted.
pub fn real(
    lo: f64,
    hi: f64,
    lo_included: bool,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let v = number(s)?;
        let above = if lo_included { v >= lo } else { v > lo };
        if above && v <= hi {
            Ok(v)
        } else {
            let open = if lo_included { "[" } else { "(" };
            Err(format!(
                "{} is outside {open}{}, {}]",
                show(v),
                show(lo),
                show(hi)
            ))
        }
    }
}

/// Worker threads: 1 to 1024.
pub const MAX_THREADS: usize = 1024;
/// Images a forward pass: 1 to 1024 (more would not fit in memory on the larger backbones).
pub const MAX_BATCH: usize = 1024;
/// Iterations, epochs, steps: at most this many.
pub const MAX_STEPS: usize = 100_000;

/// A fraction in [0, 1).
pub fn fraction(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{} is outside [0, 1): give a fraction such as 0.1",
            show(v)
        ))
    }
}

/// A probability in [0, 1].
pub fn probability(s: &str) -> Result<f32, String> {
    let v = number(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v as f32)
    } else {
        Err(format!("{} is outside [0, 1]", show(v)))
    }
}

/// An angle in degrees, in [0, 180].
pub fn degrees(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if (0.0..=180.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{} is outside [0, 180] degrees", show(v)))
    }
}

/// An image side in pixels for generated images: 32 to 2048 (the model may need more: its
/// input size).
pub fn image_side(s: &str) -> Result<usize, String> {
    whole(32, 2048)(s).map_err(|e| format!("{e} pixels"))
}

/// An attack budget in [0, 1] pixel units (`4/255` accepted): a finite number ≥ 0 (an L2
/// budget may exceed 1; an L∞ one may not, see [`check_linf`]).
pub fn epsilon(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v < 0.0 {
        return Err(format!(
            "{} is negative: budgets are in [0, 1] pixel units",
            show(v)
        ));
    }
    if v > whisker::inspect::attack::MAX_L2_EPS {
        return Err(format!(
            "{} is more than {}: no budget needs more (an L∞ one is at most 1)",
            show(v),
            show(whisker::inspect::attack::MAX_L2_EPS)
        ));
    }
    Ok(v)
}

/// An L∞ budget above 1 changes every pixel arbitrarily: it is almost certainly meant in
/// 0–255 units.
pub fn check_linf(eps: f64) -> anyhow::Result<()> {
    if eps > 1.0 {
        anyhow::bail!(
            "an L∞ budget of {eps} is more than 1: budgets are in [0, 1] pixel units (did you mean --eps {eps}/255?)"
        );
    }
    Ok(())
}

/// A comma-separated list of budgets, each as [`epsilon`].
pub fn epsilons(s: &str) -> Result<Vec<f64>, String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|e| epsilon(e.trim()))
        .collect::<Result<_, _>>()?;
    if v.is_empty() {
        return Err("give at least one budget".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced() {
        assert_eq!(epsilon("4/255").unwrap(), 4.0 / 255.0);
        assert!(check_linf(4.0)
            .unwrap_err()
            .to_string()
            .contains("did you mean --eps 4/255"));
        assert!(check_linf(8.0 / 255.0).is_ok());
        for bad in ["nan", "inf", "1/0", "-1", "x"] {
            assert!(epsilon(bad).is_err(), "{bad}");
            assert!(real(0.0, 1.0, false)(bad).is_err(), "{bad}");
        }
        assert!(epsilons("0,1/255,inf").is_err());
        assert_eq!(epsilons("0, 2/255").unwrap(), vec![0.0, 2.0 / 255.0]);
        assert!(real(0.0, 10.0, false)("0").is_err());
        assert_eq!(real(0.0, 10.0, false)("1e-3").unwrap(), 1e-3);
        assert_eq!(real(0.0, 10.0, true)("0").unwrap(), 0.0);
        assert!(real(0.0, 10.0, true)("10.5").is_err());
        let e = real(0.0, 10.0, false)("1e308").unwrap_err();
        assert_eq!(e, "1e308 is outside (0, 10]");
        assert_eq!(whole(1, 64)("65").unwrap_err(), "65 is outside 1..=64");
        assert!(whole(1, 64)("99999999999999999999999").is_err());
        assert_eq!(whole(0, 5)("0").unwrap(), 0);
        assert!(fraction("1.5").is_err() && fraction("1").is_err() && fraction("nan").is_err());
        assert_eq!(fraction("0").unwrap(), 0.0);
        assert!(probability("2").is_err());
        assert!(whole(1, 10)("0").is_err() && whole(1, 10)("-3").is_err());
        assert!(image_side("100000").is_err());
        assert!(degrees("400").is_err());
    }
}
