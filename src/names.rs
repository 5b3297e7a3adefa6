//! One table of names per kind of choice — Table 1's methods, activations, output losses and
//! (in the training client) initializations: the names the command line, the CSV logs, the
//! checkpoints and the Python bindings all read and write. Each kind lists its values once
//! ([`Named::NAMES`]); `Display`, `FromStr` and serde (with the `serde` feature) go through that
//! list, so a new value is known everywhere at once and an unknown name is an error naming the
//! kind and the choices, wherever it is read.

use crate::error::{Error, Result};

/// A kind of choice with one machine name per value.
pub trait Named: Sized + Copy + PartialEq + 'static {
    /// What the choice is called in errors (`"method"`, `"activation"`, …).
    const KIND: &'static str;
    /// Every value with its name, in the order they are listed to users.
    const NAMES: &'static [(Self, &'static str)];

    /// The value's name (`"convex-chl"`, `"hard_sigmoid"`, …).
    ///
    /// # Panics
    /// If the value is missing from [`Named::NAMES`] (a programming error, caught by the
    /// table's test).
    fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(v, _)| *v == self)
            .map(|(_, n)| *n)
            .expect("every value is in its name table")
    }

    /// The value named `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for the kind, naming the unknown name and every known one.
    fn from_name(name: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(v, _)| *v)
            .ok_or_else(|| {
                Error::input(
                    Self::KIND,
                    format!(
                        "unknown {} `{name}` (expected {})",
                        Self::KIND,
                        Self::listing()
                    ),
                )
            })
    }

    /// The names, as a list for messages: `a, b or c`.
    fn listing() -> String {
        let names: Vec<&str> = Self::NAMES.iter().map(|(_, n)| *n).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            Some((last, _)) => (*last).to_string(),
            None => String::new(),
        }
    }
}

/// `Display`, `FromStr` and (feature `serde`) `Serialize`/`Deserialize` of a [`Named`] type,
/// all through its table.
#[macro_export]
#[doc(hidden)]
macro_rules! named {
    ($t:ty) => {
        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::names::Named::as_str(*self))
            }
        }

        impl ::std::str::FromStr for $t {
            type Err = $crate::Error;

            fn from_str(s: &str) -> $crate::Result<Self> {
                <$t as $crate::names::Named>::from_name(s)
            }
        }

        #[cfg(feature = "serde")]
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str($crate::names::Named::as_str(*self))
            }
        }

        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                let name = <::std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                <$t as $crate::names::Named>::from_name(&name).map_err(serde::de::Error::custom)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::method::Method;
    use crate::nested::OutputLoss;
    use crate::prox::Activation;

    /// Every table: names unique, each value listed once, `Display` and `FromStr` inverse.
    fn check<T: Named + std::fmt::Debug + std::fmt::Display + std::str::FromStr>() {
        for (i, (v, n)) in T::NAMES.iter().enumerate() {
            assert_eq!(v.to_string(), *n);
            assert_eq!(T::from_name(n).unwrap(), *v);
            for (w, m) in &T::NAMES[i + 1..] {
                assert!(v != w && n != m, "{n} twice in the {} table", T::KIND);
            }
        }
        let err = T::from_name("no-such-name").unwrap_err().to_string();
        assert!(
            err.contains(T::KIND) && err.contains(T::NAMES[0].1),
            "{err}"
        );
    }

    #[test]
    fn every_name_table_is_one_to_one() {
        check::<Method>();
        check::<OutputLoss>();
        // Activations: the named ones and a box, through Display and FromStr.
        let boxed = Activation::Box { lo: -0.5, hi: 2.0 };
        for a in Activation::NAMED.iter().map(|(a, _)| *a).chain([boxed]) {
            assert_eq!(a.to_string().parse::<Activation>().unwrap(), a);
        }
        assert!("box(1, 0)".parse::<Activation>().is_err());
        assert!("swish"
            .parse::<Activation>()
            .unwrap_err()
            .to_string()
            .contains("hard_tanh"));
        assert_eq!(
            Method::NAMES.len(),
            Method::ALL.len() + Method::EXTRAS.len()
        );
    }
}
