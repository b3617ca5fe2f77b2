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

/// A finite number > 0.
pub fn positive(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not positive: give a number > 0"))
    }
}

/// A finite number ≥ 0.
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is negative: give a number ≥ 0"))
    }
}

/// A fraction in [0, 1).
pub fn fraction(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is outside [0, 1): give a fraction such as 0.1"
        ))
    }
}

/// A probability in [0, 1].
pub fn probability(s: &str) -> Result<f32, String> {
    let v = number(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v as f32)
    } else {
        Err(format!("{v} is outside [0, 1]"))
    }
}

/// A scale factor ≥ 1.
pub fn at_least_one(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v >= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is less than 1: give a factor ≥ 1 (1: off)"))
    }
}

/// An angle in degrees, in [0, 180].
pub fn degrees(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if (0.0..=180.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside [0, 180] degrees"))
    }
}

/// A count ≥ 1.
pub fn count(s: &str) -> Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if v >= 1 {
        Ok(v)
    } else {
        Err("0 is not allowed: give a whole number ≥ 1".into())
    }
}

/// An image side in pixels for generated images: 32 to 2048 (the model may need more: its
/// input size).
pub fn image_side(s: &str) -> Result<usize, String> {
    let v = count(s)?;
    if (32..=2048).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 32..=2048 pixels"))
    }
}

/// An attack budget in [0, 1] pixel units (`4/255` accepted): a finite number ≥ 0 (an L2
/// budget may exceed 1; an L∞ one may not, see [`check_linf`]).
pub fn epsilon(s: &str) -> Result<f64, String> {
    let v = number(s)?;
    if v < 0.0 {
        return Err(format!(
            "{v} is negative: budgets are in [0, 1] pixel units"
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
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert!(epsilons("0,1/255,inf").is_err());
        assert_eq!(epsilons("0, 2/255").unwrap(), vec![0.0, 2.0 / 255.0]);
        assert!(positive("0").is_err());
        assert_eq!(positive("1e-3").unwrap(), 1e-3);
        assert!(fraction("1.5").is_err() && fraction("1").is_err() && fraction("nan").is_err());
        assert_eq!(fraction("0").unwrap(), 0.0);
        assert!(probability("2").is_err());
        assert!(count("0").is_err() && count("-3").is_err());
        assert!(image_side("100000").is_err());
        assert!(at_least_one("0.5").is_err());
        assert!(degrees("400").is_err());
        assert!(non_negative("-1e-9").is_err());
    }
}
