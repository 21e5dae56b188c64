"""The fusionline dashboard: one Streamlit app with a page per line, all drawn from the SQLite audit store.

Launch::

    streamlit run apps/dashboard.py --server.address 127.0.0.1 --server.headless true \\
        --server.fileWatcherType none -- --db runs/audit.db [--refresh 2]

The store is ``--db``, else ``$FUSIONLINE_AUDIT_DB``, else ``runs/audit.db``. Until the selected run finishes, a
page's body refreshes every ``--refresh`` seconds (0 turns that off). Each line's page lives in its own module
(:data:`PAGES`); all queries live in :mod:`apps.data`. A last page (:mod:`apps.jobs`) lists the Ray jobs
``fusionline submit`` sent to the jobs server at ``--ray-address`` (else ``$FUSIONLINE_RAY_ADDRESS``, else the local
head ``fusionline submit`` started).

With ``--password-env VAR`` the app asks for the password held in the environment variable ``VAR`` before it
shows anything (the password itself never appears on a command line); an unset or empty ``VAR`` locks it.
"""

from __future__ import annotations

import argparse
import hmac
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts apps/ on the path, not the repository root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from apps import factory, jobs, medical, service  # noqa: E402

#: One page per line: line name -> (title, icon, ``page(db, refresh_s)``).
PAGES: dict[str, tuple[str, str, Callable[[str, float], None]]] = {
    factory.LINE: ("Defect inspection", ":material/precision_manufacturing:", factory.page),
    medical.LINE: ("Lung-nodule support", ":material/pulmonology:", medical.page),
    service.LINE: ("Service desk", ":material/support_agent:", service.page),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options after ``--`` on the ``streamlit run`` line; unknown arguments are ignored."""
    p = argparse.ArgumentParser(prog="dashboard", allow_abbrev=False)
    p.add_argument("--db", default=os.environ.get("FUSIONLINE_AUDIT_DB", "runs/audit.db"), help="audit store")
    p.add_argument("--refresh", type=float, default=2.0,
                   help="seconds between refreshes of an unfinished run; 0 = off")
    p.add_argument("--ray-address", default=None,
                   help="Ray jobs server for the jobs page, http://HEAD:8265 (default: $FUSIONLINE_RAY_ADDRESS, "
                        "else the local head `fusionline submit` started)")
    p.add_argument("--password-env", default=None,
                   help="environment variable holding the password the page asks for (default: no password)")
    return p.parse_known_args(argv)[0]


def authenticated(password_env: str | None) -> bool:
    """True once the viewer typed the password held in ``$password_env`` (always True without one)."""
    if password_env is None or st.session_state.get("authenticated"):
        return True
    expected = os.environ.get(password_env, "")
    if not expected:
        st.error(f"**Dashboard locked.** The password variable `{password_env}` is not set on the server.",
                 icon=":material/lock:")
        return False
    typed = st.text_input("Password", type="password", key="password")
    if not typed:
        return False
    if not hmac.compare_digest(typed.encode(), expected.encode()):
        st.error("Wrong password.", icon=":material/lock:")
        return False
    st.session_state["authenticated"] = True
    del st.session_state["password"]
    st.rerun()


def main() -> None:
    args = parse_args(sys.argv[1:])
    st.set_page_config(page_title="fusionline", page_icon=":material/factory:", layout="wide")
    if not authenticated(args.password_env):
        return
    db = str(Path(args.db).expanduser())

    def line_page(line: str, title: str, icon: str, render: Callable[[str, float], None]) -> st.Page:
        def show() -> None:
            render(db, args.refresh)

        return st.Page(show, title=f"{title} · fusionline", icon=icon, url_path=line)

    def jobs_page() -> None:
        jobs.page(args.ray_address, args.refresh)

    jobs_entry = st.Page(jobs_page, title=f"{jobs.TITLE} · fusionline", icon=":material/work_history:",
                         url_path="jobs")
    st.navigation([*(line_page(line, *page) for line, page in PAGES.items()), jobs_entry]).run()


main()
