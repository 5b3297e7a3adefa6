//! What the command line prints: standard output that ends quietly on a closed pipe, errors as
//! one line naming the flag, and the training progress.

use std::io::IsTerminal;
use std::process::ExitCode;

/// `println!` for the program's output: a closed pipe (`| head`) ends the program quietly with
/// exit 0, as Unix filters do; any other write failure (a full disk, `> /dev/full`) is a
/// one-line error and exit 1. Never a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::output::stdout_failed(e)
        }
    }};
}

/// `print!` with the same handling as [`out!`].
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::output::stdout_failed(e)
        }
    }};
}

/// Ends the program after standard output failed (see [`out!`]).
pub(crate) fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// Prints a library error as one line and maps it to exit code 1.
pub(crate) fn report(r: bilevel::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", for_cli(e));
            ExitCode::FAILURE
        }
    }
}

/// The library names the fields of its settings (`batch`, `adam.lr`, `resume`, …); the
/// command line names its flags. Other errors pass through; a missing data directory gets the
/// flag that chooses another one.
fn for_cli(e: bilevel::Error) -> String {
    const FLAGS: [(&str, &str); 14] = [
        ("seeds", "--seeds"),
        ("jobs", "--jobs"),
        ("sweeps", "--sweeps"),
        ("output", "--output"),
        ("batch", "--batch"),
        ("adam.lr", "--lr"),
        ("init", "--init"),
        ("method", "--method"),
        ("beta", "--beta"),
        ("epochs", "--epochs"),
        ("resume", "--resume"),
        ("overwrite", "--overwrite"),
        ("checkpoint", "--checkpoint"),
        ("train_size", "--train-size"),
    ];
    match e {
        bilevel::Error::InvalidInput { field, reason } => {
            let flag = FLAGS
                .iter()
                .find(|(f, _)| *f == field)
                .map_or(field.as_str(), |(_, flag)| flag);
            format!("invalid {flag}: {reason}")
        }
        bilevel::Error::BadData { path, reason } if reason.starts_with("no such directory") => {
            format!(
                "bad data file {}: {reason} (choose the directory with --data DIR)",
                path.display()
            )
        }
        other => other.to_string(),
    }
}

/// Progress: an indicatif bar on a terminal, one line per epoch always.
pub(crate) struct Progress {
    pub(crate) bar: indicatif::ProgressBar,
    epochs: usize,
}

impl Progress {
    /// A line above the bar (or plainly, when there is no bar).
    pub(crate) fn line(&self, text: String) {
        if self.bar.is_hidden() {
            out!("{text}");
        } else {
            self.bar.println(text);
        }
    }

    pub(crate) fn new() -> Self {
        let bar = if std::io::stdout().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} loss {msg} ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Self { bar, epochs: 0 }
    }
}

impl bilevel::app::nn::Observer for Progress {
    fn begin(&mut self, label: &str, epochs: usize) {
        self.epochs = epochs;
        self.line(format!("== {label}"));
    }

    fn step(&mut self, epoch: usize, step: usize, steps: usize, loss: f64) {
        if step == 1 {
            self.bar.reset();
            self.bar.set_length(steps as u64);
            self.bar
                .set_prefix(format!("epoch {epoch}/{}", self.epochs));
        }
        // The message allocates: refresh it every 50 steps only.
        if step.is_multiple_of(50) || step == steps {
            self.bar.set_message(format!("{loss:.4}"));
        }
        self.bar.set_position(step as u64);
    }

    fn epoch(&mut self, r: &bilevel::app::nn::EpochRecord, resumed: bool) {
        let exact = r
            .exact_train_error_pct
            .map_or(String::new(), |v| format!(", exact train error {v:.2} %"));
        self.line(format!(
            "epoch {:>3}{}: loss {:.4}, train error {:.2} % (running{exact}), test error {:.2} %, {:.2} s",
            r.epoch,
            if resumed { " (from checkpoint)" } else { "" },
            r.train_loss,
            r.train_error_pct,
            r.test_error_pct,
            r.seconds
        ));
        if !self.bar.is_hidden() {
            self.bar.set_position(0);
        }
    }
}

/// `$COLUMNS` when set to a sensible number, else 100.
pub(crate) fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|&c| (40..=1000).contains(&c))
        .unwrap_or(100)
}

/// Greedy word wrap to lines of at most `width` characters (a longer word gets its own line).
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
