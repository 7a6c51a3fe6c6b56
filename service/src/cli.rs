//! Configuration helpers shared by the binaries.

/// The values of `T`'s flags when none is given on a command line: each flag's environment
/// variable, else its default. Lets in-process users of an options struct (the embedded run)
/// take the defaults stated once in its `#[arg]` attributes instead of repeating them.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = command.try_get_matches_from(std::iter::empty::<String>())?;
    T::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    #[derive(Debug, clap::Args)]
    struct Example {
        #[arg(long, default_value_t = 7)]
        count: u32,
        #[arg(long)]
        name: Option<String>,
    }

    #[test]
    fn defaults_come_from_the_arg_attributes() {
        let example: Example = super::defaults().unwrap();
        assert_eq!((example.count, example.name), (7, None));
    }
}
