"""The hosted pages: Checkout's pay page and the customer portal. Plain HTML forms, no script."""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .resources import checkout, lifecycle
from .resources.catalog import get_price
from .state import JSON
from .wire import StripeError, decode_form

if TYPE_CHECKING:
    from .app import Emulator

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}"
    ".test{background:#ffde92;padding:.5rem 1rem;border-radius:6px}"
    "button{font-size:1.1rem;padding:.6rem 1.6rem;cursor:pointer}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{padding:.45rem .75rem .45rem 0;text-align:left;vertical-align:top;"
    "border-bottom:1px solid #e3e3e3}th{font-weight:600;font-size:.9rem;color:#555}"
    "td{overflow-wrap:anywhere}td form{margin:0}"
    "td button{font-size:.95rem;padding:.4rem .8rem;overflow-wrap:normal}"
)
# A small "S" mark, so a browser's `/favicon.ico` request finds something.
FAVICON = (
    b"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'>"
    b"<rect width='32' height='32' rx='6' fill='#635bff'/>"
    b"<text x='16' y='23' font-size='20' text-anchor='middle' fill='#fff' "
    b"font-family='sans-serif'>S</text></svg>"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><link rel='icon' href='/favicon.ico'>"
        f"<style>{_STYLE}</style></head><body>"
        "<p class='test'>Stripe emulator: test mode, no real money moves.</p>"
        f"<h1>{escape(title)}</h1>{body}</body></html>",
        status_code=status,
    )


def _date(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def success_redirect(session: JSON) -> str | None:
    url = session["success_url"]
    if url is None:
        return None
    return (
        str(url)
        .replace("{CHECKOUT_SESSION_ID}", session["id"])
        .replace("%7BCHECKOUT_SESSION_ID%7D", session["id"])
    )


def _price_line(emu: Emulator, price: JSON) -> str:
    product = emu.store.get("products", price["product"]) or {"name": price["product"]}
    recurring = price.get("recurring") or {}
    cents = f"{escape(price['unit_amount_decimal'])}¢ {price['currency'].upper()}"
    if recurring.get("usage_type") == "metered":
        terms = f"{cents} per unit of usage, billed {_every(recurring)} in arrears"
    elif recurring:
        terms = f"{cents} each, billed {_every(recurring)}"
    else:
        terms = f"{cents} each"
    return f"<tr><td>{escape(str(product['name']))}</td><td>{terms}</td></tr>"


def _every(recurring: JSON) -> str:
    names = {"day": "daily", "week": "weekly", "month": "monthly", "year": "yearly"}
    count = int(recurring.get("interval_count") or 1)
    if count == 1:
        interval = str(recurring["interval"])
        return names.get(interval, interval)
    return f"every {count} {recurring['interval']}s"


def routes(emu: Emulator) -> list[Route]:
    async def show_checkout(request: Request) -> Response:
        ctx = emu.ctx(request)
        try:
            session = checkout.get_session(ctx, request.path_params["id"])
        except StripeError as exc:
            return _page("Checkout not found", f"<p>{escape(exc.message)}</p>", 404)
        if session["status"] == "complete":
            target = success_redirect(session)
            note = f"<p><a href='{escape(target)}'>Continue</a></p>" if target else ""
            return _page("Already paid", f"<p>This session is complete.</p>{note}")
        if session["status"] != "open":
            return _page("Checkout expired", "<p>This Checkout Session has expired.</p>", 410)
        lines = "".join(
            _price_line(emu, get_price(ctx, line["price"])) for line in session["_line_items"]
        )
        email = escape(session["customer_email"] or "")
        cancel = session["cancel_url"]
        cancel_link = f"<p><a href='{escape(cancel)}'>Cancel and go back</a></p>" if cancel else ""
        body = (
            f"<table>{lines}</table>"
            f"<form method='post' action='/checkout/{escape(session['id'])}'>"
            f"<p><label>Email <input type='email' name='email' value='{email}'></label></p>"
            "<p><button type='submit'>Pay</button></p></form>"
            f"{cancel_link}"
        )
        return _page("Subscribe" if session["mode"] == "subscription" else "Pay", body)

    async def pay(request: Request) -> Response:
        ctx = emu.ctx(request)
        form = decode_form(await request.body())
        email = form.get("email") or None
        try:
            session = checkout.get_session(ctx, request.path_params["id"])
            if session["status"] == "open":
                checkout.complete(ctx, session, email=None if email is None else str(email))
                emu.persist()
        except StripeError as exc:
            return _page("Payment failed", f"<p>{escape(exc.message)}</p>", exc.status)
        if session["status"] != "complete":
            return _page("Checkout expired", "<p>This Checkout Session has expired.</p>", 410)
        target = success_redirect(session)
        if target is None:
            return _page("Thanks!", "<p>Your payment is complete.</p>")
        return RedirectResponse(target, status_code=303)

    def portal_session(request: Request) -> JSON | None:
        return emu.store.get("portal_sessions", request.path_params["id"])

    async def show_portal(request: Request) -> Response:
        session = portal_session(request)
        if session is None:
            return _page("Portal session not found", "", 404)
        subs = [
            s
            for s in emu.store.table("subscriptions").values()
            if s["customer"] == session["customer"]
        ]
        rows = []
        for sub in subs:
            item = sub["items"]["data"][0]
            action = "renew" if sub["cancel_at_period_end"] else "cancel"
            label = "Don't cancel" if action == "renew" else "Cancel at period end"
            button = (
                f"<form method='post' action='/portal/{escape(session['id'])}/subscriptions/"
                f"{escape(sub['id'])}/{action}'><button type='submit'>{label}</button></form>"
                if sub["status"] != "canceled"
                else ""
            )
            rows.append(
                f"<tr><td>{escape(sub['id'])}</td><td>{escape(sub['status'])}"
                f"{' (cancels at period end)' if sub['cancel_at_period_end'] else ''}</td>"
                f"<td>until {_date(item['current_period_end'])}</td><td>{button}</td></tr>"
            )
        back = session["return_url"]
        back_link = f"<p><a href='{escape(back)}'>Return</a></p>" if back else ""
        head = "<tr><th>Subscription</th><th>Status</th><th>Period</th><th></th></tr>"
        table = f"<table>{head}{''.join(rows)}</table>" if rows else "<p>No subscriptions.</p>"
        body = f"{table}{back_link}"
        return _page("Your subscriptions", body)

    async def portal_action(request: Request) -> Response:
        session = portal_session(request)
        sub = emu.store.get("subscriptions", request.path_params["sub"])
        action = request.path_params["action"]
        if action not in ("cancel", "renew"):
            return _page("Not found", "", 404)
        if session is None or sub is None or sub["customer"] != session["customer"]:
            return _page("Not found", "", 404)
        try:
            lifecycle.set_cancel_at_period_end(emu.ctx(request), sub, action == "cancel")
        except StripeError as exc:
            return _page("Could not update", f"<p>{escape(exc.message)}</p>", exc.status)
        emu.persist()
        return RedirectResponse(f"/portal/{session['id']}", status_code=303)

    async def favicon(_: Request) -> Response:
        return Response(FAVICON, media_type="image/svg+xml")

    return [
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/checkout/{id}", show_checkout, methods=["GET"]),
        Route("/checkout/{id}", pay, methods=["POST"]),
        Route("/portal/{id}", show_portal, methods=["GET"]),
        Route("/portal/{id}/subscriptions/{sub}/{action:str}", portal_action, methods=["POST"]),
    ]
