"""``clipeval report``: one self-contained HTML page (leaderboard, comparisons, recall@k curves,
worst queries with thumbnails, the runs' facts) from result and detail files.

Needs the ``report`` extra (jinja2, matplotlib); nothing else in the engine imports this
package, and :func:`write_report` imports them only when called.
"""

from .render import write_report

__all__ = ["write_report"]
