// The one reader of the server's refusals, shared by every page's script as window.LLMIDE.errors.
// The server answers an error as JSON: {"detail": "..."} (app/core/error_handlers.py; FastAPI's
// own shape is a list of {"loc", "msg"}) or, under /v1, OpenAI's {"error": {"message", ...}};
// a streamed answer reports {"error": "..."} in an event. A page shows that text — the
// message is written for the person reading it — and falls back to the status only when the
// body holds no message (a proxy's HTML page, a cut-off body), never a bare "HTTP 400".
(function () {
  "use strict";

  var SESSION_ENDED = "Your session has ended; reload the page and sign in again.";
  // Where FastAPI says a value came from; the field's own name is what a person recognises.
  var SOURCES = { body: true, query: true, path: true, form: true, header: true, cookie: true };

  function fallback(status) {
    return "The request failed (HTTP " + status + ").";
  }

  function validationItem(item) {
    if (typeof item === "string") return item.trim();
    if (!item || typeof item !== "object") return "";
    var msg = typeof item.msg === "string" ? item.msg : (typeof item.message === "string" ? item.message : "");
    var loc = Array.isArray(item.loc) ? item.loc.filter(function (p) { return !SOURCES[p]; }) : [];
    return msg && loc.length ? loc.join(".") + ": " + msg : msg;
  }

  // The message in a parsed error body (any of the shapes above), or "" when it holds none.
  function messageOf(body) {
    if (body == null) return "";
    if (typeof body === "string") return body.trim();
    if (Array.isArray(body)) return body.map(validationItem).filter(Boolean).join("; ");
    if (typeof body !== "object") return "";
    if (body.detail != null) return messageOf(body.detail);
    if (body.error != null) {
      var error = body.error;
      return typeof error === "object" && !Array.isArray(error) ? messageOf(error.message) : messageOf(error);
    }
    return typeof body.message === "string" ? body.message.trim() : "";
  }

  // The message of a refusal read as text (an XMLHttpRequest's, as htmx has it).
  function fromText(status, text, contentType) {
    var message = "";
    if (text) {
      try {
        message = messageOf(JSON.parse(text));
      } catch (err) {
        // Not JSON: a short plain-text answer (Starlette's "Invalid host header") is a message;
        // an HTML page (a proxy's 502) is not something to paste into an alert.
        if ((contentType || "").indexOf("text/plain") === 0 && text.length <= 500) message = text.trim();
      }
    }
    return message || fallback(status);
  }

  // The message of a fetch() Response that was not the answer hoped for; reads its body.
  async function fromResponse(response) {
    // A page route answers a signed-out browser with a redirect to the sign-in page.
    if (response.redirected && new URL(response.url).pathname === "/login") return SESSION_ENDED;
    var text = "";
    try { text = await response.text(); } catch (err) { /* the body was cut off: no message */ }
    return fromText(response.status, text, response.headers.get("content-type"));
  }

  // The message of a server-sent event that reports an error ({"error": ...}).
  function fromEvent(event) {
    return messageOf({ error: event.error }) || "The answer stopped: the server reported an error.";
  }

  window.LLMIDE = window.LLMIDE || {};
  window.LLMIDE.errors = {
    messageOf: messageOf,
    fromText: fromText,
    fromResponse: fromResponse,
    fromEvent: fromEvent,
    fallback: fallback,
  };
})();
