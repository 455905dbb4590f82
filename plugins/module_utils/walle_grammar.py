# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)
"""What a node accepts: the one grammar of the values a job sends to a node.

Shared by the job-spec parser on the scheduler (`walle.jobspec.parse`, which loads this very file
through `walle.jobspec.grammar`) and the unit renderer on the nodes (`walle_units`, which imports
it from the walle.pool collection's module_utils). So `walle validate` accepts exactly what the
modules render and systemd loads: sizes, durations, CPU counts, signals, paths, program paths, text.

Stdlib only: it ships to the nodes inside every module run. Each function returns the value in
its canonical form or raises ValueError with a message that says what is allowed; the message
does not name the field, the caller prefixes its own field path.

systemd facts relied on (systemd.syntax(7), systemd.service(5), systemd's string_is_safe()):
- a unit value is stripped of surrounding whitespace and a trailing backslash continues the
  line, so paths written raw (WorkingDirectory=) cannot carry either;
- the program of an Exec*= line may not contain a quote or a backslash, even quoted
  ("Executable name contains special characters"), and `$` is not substituted in it while
  it is in argv[0], so a `$` cannot be passed literally there either;
- sizes are parsed into 64-bit integers; the kernel's limits (memory.max, ...) are int64.
"""

from __future__ import annotations

import math
import posixpath
import re
import unicodedata
from fractions import Fraction

__all__ = [
    "MAX_BYTES",
    "MAX_CPUS",
    "MAX_NUMBER_CHARS",
    "MAX_SECONDS",
    "MAX_TEXT",
    "STOP_SIGNALS",
    "check_calendar",
    "check_executable",
    "check_image_ref",
    "check_path",
    "check_signal",
    "check_text",
    "format_duration",
    "parse_cpus",
    "parse_duration",
    "parse_size",
    "safe_number",
]

MAX_TEXT = 4096  # characters of one string value
MAX_NUMBER_CHARS = 32  # characters of a number written as text (or as a YAML scalar)
MAX_BYTES = (1 << 63) - 1  # the largest size the kernel stores (memory.max is an int64)
MAX_CPUS = 1024  # cores one instance may ask for
MAX_RUNS = 20  # cron, concurrency allow: runs of one slot at once (the spec's concurrency.max)
DEFAULT_MAX_RUNS = 3  # ... when the spec (or walle_workload's max_runs) does not say
MAX_SECONDS = 100 * 365 * 86400  # longest duration (systemd keeps microseconds in 64 bits)

# Signals that end a process by default (signal(7): action Term or Core). A stop signal that
# stops, continues or is ignored (SIGSTOP, SIGCONT, SIGCHLD, SIGWINCH ...) would leave the
# instance running until TimeoutStopSec= and then SIGKILL: refused.
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGABRT",
                "SIGALRM", "SIGKILL")

_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50,
                 "E": 1 << 60}
_SIZE = re.compile(r"(\d+)(?:\.(\d+))?\s*([KMGTPE]?)(?:i?B)?", re.IGNORECASE)
_SECONDS_PER = {"ms": Fraction(1, 1000), "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_EXECUTABLE_REFUSED = "\"'\\$"  # quotes and backslash: systemd; `$`: see the module text
_CALENDAR = re.compile(r"[A-Za-z0-9 _*:,./~+-]{1,200}")
# Images (docs/images.md): NAME:VERSION or NAME@sha256:HEX. A name is lowercase segments
# joined by '/', each starting with a letter or digit (so never '..'); a version is a tag.
_IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*")
_IMAGE_VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_IMAGE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_IMAGE_NAME = 128


# ------------------------------------------------------------------------------ text

def check_text(value: object) -> str:
    """A string without control characters (they could end a unit line), at most MAX_TEXT."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r} at position "
                         f"{value.index(bad)}; newlines, carriage returns, tabs, NUL and other "
                         "control characters are not allowed (values are written into unit "
                         "files and Consul)")
    if len(value) > MAX_TEXT:
        raise ValueError(f"is {len(value)} characters long; at most {MAX_TEXT} are allowed")
    return value


def check_path(value: object) -> str:
    """An absolute, normalised path that systemd reads back unchanged when written raw."""
    text = check_text(value)
    if not text.startswith("/") or text.startswith("//") or posixpath.normpath(text) != text:
        raise ValueError(f"{_show(text)} must be an absolute, normalised path (starting with '/', "
                         "without '..', '.', '//' or a trailing '/')")
    if text != text.strip():
        raise ValueError(f"{_show(text)} must not end with whitespace (systemd strips it)")
    if text.endswith("\\"):
        raise ValueError(f"{_show(text)} must not end with a backslash (systemd reads it as a line "
                         "continuation)")
    return text


def check_executable(value: object) -> str:
    """A program path for an Exec*= line: check_path, and none of the characters systemd
    refuses or rewrites in a program name."""
    text = check_path(value)
    bad = sorted({c for c in text if c in _EXECUTABLE_REFUSED})
    if bad:
        shown = " ".join(bad)
        raise ValueError(f"{_show(text)} contains {shown}: systemd refuses quotes and "
                         "backslashes in a program path and cannot pass '$' in it literally; "
                         "move or link the program to a path without them")
    return text


def check_calendar(value: object) -> str:
    """The characters of an OnCalendar= expression (its shape is the spec parser's concern,
    its meaning systemd's); no edge whitespace, which systemd would strip."""
    text = check_text(value)
    if not _CALENDAR.fullmatch(text):
        raise ValueError(f"{_show(text)} is not an OnCalendar= expression: letters, digits, "
                         "spaces and * : , . / ~ + - _ only, at most 200 characters")
    if text != text.strip():
        raise ValueError(f"{_show(text)} must not start or end with whitespace (systemd strips "
                         "it)")
    return text


def check_signal(value: object) -> str:
    """A stop signal from the allow-list STOP_SIGNALS (exact name, such as SIGTERM)."""
    text = check_text(value)
    if text not in STOP_SIGNALS:
        guess = text.upper() if text.upper().startswith("SIG") else f"SIG{text.upper()}"
        hint = f"; did you mean {guess}?" if guess in STOP_SIGNALS and guess != text else ""
        raise ValueError(f"{_show(text)} is not a signal name that ends a process: use one of "
                         f"{', '.join(STOP_SIGNALS)}{hint}")
    return text


def check_image_ref(value: object) -> tuple[str, str | None, str | None]:
    """An image reference -> (name, version, digest), exactly one of version and digest set:
    'web:1.0' -> ('web', '1.0', None); 'web@sha256:<64 hex>' -> ('web', None, 'sha256:...')."""
    text = check_text(value)
    name, at, digest = text.partition("@")
    version = None
    if not at:
        name, colon, version = text.partition(":")
        if not colon:
            raise ValueError(f"{_show(text)} has no version: name an image as NAME:VERSION "
                             "(web:1.0) or NAME@sha256:HEX; see `walle image ls`")
    if not _IMAGE_NAME.fullmatch(name) or len(name) > MAX_IMAGE_NAME:
        raise ValueError(f"{_show(name)} is not an image name: lowercase letters, digits, "
                         "'_', '.', '-' in segments joined by '/', each starting with a letter "
                         f"or digit, at most {MAX_IMAGE_NAME} characters (no host path)")
    if version is not None and (not _IMAGE_VERSION.fullmatch(version) or len(version) > 128):
        raise ValueError(f"{_show(version)} is not an image version: letters, digits, '_', "
                         "'.', '-', starting with a letter, digit or '_', at most 128 characters")
    if at and not _IMAGE_DIGEST.fullmatch(digest):
        raise ValueError(f"{_show(digest)} is not an image digest: write sha256: and 64 "
                         "lowercase hex digits")
    return name, version, digest or None


# ---------------------------------------------------------------------------- numbers

def safe_number(value: object) -> int | float | None:
    """An int or a finite float small enough to convert and compare safely, else None: huge
    integers overflow float() and take quadratic time to print."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return value if -MAX_BYTES <= value <= MAX_BYTES else None
    return value if math.isfinite(value) else None


def _above(value: object, limit: int) -> bool:
    """A number (of any size: compared, never converted) larger than limit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not (isinstance(value, float) and math.isnan(value)) and value > limit


def _number_text(text: str, what: str) -> str:
    text = text.strip()
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"{what} is {len(text)} characters long; at most "
                         f"{MAX_NUMBER_CHARS} are allowed")
    return text


def parse_cpus(value: object) -> float:
    """Cores, a number (or numeric text) from 0 to MAX_CPUS; fractions allowed."""
    number = safe_number(value)
    if isinstance(value, str):
        text = _number_text(value, "the number")
        number = float(text) if _NUMBER.fullmatch(text) else None
    if number is None or not 0 <= number <= MAX_CPUS:
        raise ValueError(f"expected cores as a number from 0 to {MAX_CPUS} (fractions allowed)")
    return float(number)


# ------------------------------------------------------------------------------ sizes

def parse_size(value: object) -> int:
    """Bytes, from 0 to MAX_BYTES: a whole number, or text such as '512M', '1.5G', '4GiB'
    (units K, M, G, T, P, E are powers of 1024; a trailing B or iB is allowed)."""
    number = MAX_BYTES + 1 if _above(value, MAX_BYTES) else safe_number(value)
    if isinstance(value, str):
        match = _SIZE.fullmatch(_number_text(value, "the size"))
        if match is None:
            number = None
        else:
            whole, fraction, unit = match[1], match[2] or "", match[3].upper()
            exact = Fraction(int(whole + fraction), 10 ** len(fraction))
            number = int(exact * _SIZE_FACTORS[unit])  # floor: never more than asked
    elif isinstance(number, float):
        number = int(number) if number.is_integer() else None
    if number is None or number < 0:
        raise ValueError("expected a size: bytes as a whole number, or a number with a unit "
                         "K, M, G, T, P or E (powers of 1024) such as '512M'")
    if number > MAX_BYTES:
        raise ValueError(f"more than the largest size a node accepts, {MAX_BYTES} bytes "
                         "(8E minus one byte)")
    return number


# -------------------------------------------------------------------------- durations

def parse_duration(value: object) -> float:
    """Seconds, from 0 to MAX_SECONDS: a number, or text '500ms', '10s', '2m', '1h', '1d'
    and combinations such as '1m30s'. Rounded to the microsecond (systemd's unit)."""
    number = MAX_SECONDS + 1 if _above(value, MAX_SECONDS) else safe_number(value)
    if isinstance(value, str):
        text = _number_text(value, "the duration")
        number = None
        if _DURATION.fullmatch(text):
            number = sum(Fraction(n) * _SECONDS_PER[unit]
                         for n, unit in _DURATION_PART.findall(text))
    if number is None or number < 0:
        raise ValueError("expected a duration: seconds as a number, or text such as '500ms', "
                         "'10s', '2m', '1h' (or combined: '1m30s')")
    if number > MAX_SECONDS:
        raise ValueError(f"more than the longest duration a node accepts, {MAX_SECONDS}s "
                         "(100 years)")
    return round(float(number), 6)


def format_duration(seconds: object) -> str:
    """Seconds as a systemd time span: whole seconds as "30s", otherwise whole ms "1500ms";
    positive infinity as "infinity"."""
    if isinstance(seconds, float) and math.isinf(seconds) and seconds > 0:
        return "infinity"
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"expected seconds as a number, got {seconds!r}")
    if safe_number(seconds) is None or not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"must be a number of seconds from 0 to {MAX_SECONDS}, "
                         f"got {_short(seconds)}")
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _show(text: str) -> str:
    """A value quoted for a one-line message: escapes shown, long text cut."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _short(value: object) -> str:
    if isinstance(value, int) and safe_number(value) is None:
        return f"a number of about {int(math.log10(abs(value)))} digits"
    return repr(value)
