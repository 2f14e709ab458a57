// obsflow serve: the SharedWorker behind the view pages. It holds one EventSource per followed
// stream for every tab of this browser profile, so ten tabs of a view are one connection, not
// ten (over HTTP/1.1 a browser opens at most 6 per host: a 7th live tab would never update).
//
// A tab posts {type: "follow", url} and, when it goes, {type: "leave"}. The worker posts
//   {type: "event", kind: "snapshot" | "rows", id, data}  — the stream's events, data as sent;
//   {type: "status", state, tabs}                         — "live" / "reconnecting…";
//   {type: "error", message}                              — the worker's own errors (the tab
//                                                            logs them: a test sees them).
// A tab that joins a stream already open gets the rows so far as one snapshot event (with the
// stream's last id), then the events as they come. The EventSource resumes by itself with
// Last-Event-ID after the server restarts: the catch-up events reach every tab.
"use strict";

const feeds = new Map(); // url -> Feed

const keyOf = (r) => `${r.source}\u0000${r.channel}\u0000${r.window_start}`;

class Feed {
  constructor(url) {
    this.url = url;
    this.ports = new Set();
    this.rows = new Map(); // the stream's rows so far, for tabs that join later
    this.id = ""; // the last event id
    this.state = "connecting…";
    this.open();
  }

  open() {
    // After a refusal (the stream closed: a 4xx or 5xx), open it again, from the last
    // position while that is accepted, from a snapshot once it is not.
    let url = this.url;
    if (this.id && !this.refusedId) {
      url += (url.includes("?") ? "&" : "?") + "last_id=" + encodeURIComponent(this.id);
    }
    const source = new EventSource(url);
    this.source = source;
    const onEvent = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.reset) this.rows.clear();
      for (const r of msg.rows) this.rows.set(keyOf(r), r);
      if (e.lastEventId) this.id = e.lastEventId;
      this.refusedId = false;
      this.post({ type: "event", kind: e.type, id: e.lastEventId, data: e.data });
    };
    source.addEventListener("snapshot", onEvent);
    source.addEventListener("rows", onEvent);
    source.onopen = () => this.status("live");
    source.onerror = () => {
      this.status("reconnecting…");
      if (source.readyState === EventSource.CLOSED && this.ports.size) {
        this.refusedId = url !== this.url; // asked with an id and refused: ask without
        this.retry = setTimeout(() => this.open(), 3000);
      }
    };
  }

  join(port) {
    this.ports.add(port);
    if (this.rows.size || this.id) {
      const data = JSON.stringify({ commit: null, reset: true, rows: [...this.rows.values()] });
      port.postMessage({ type: "event", kind: "snapshot", id: this.id, data });
    }
    this.status(this.state);
  }

  leave(port) {
    this.ports.delete(port);
    if (this.ports.size) this.status(this.state);
    return this.ports.size === 0;
  }

  close() {
    clearTimeout(this.retry);
    this.source.close();
  }

  status(state) {
    this.state = state;
    this.post({ type: "status", state, tabs: this.ports.size });
  }

  post(msg) {
    for (const port of this.ports) port.postMessage(msg);
  }
}

function leave(port) {
  for (const [url, feed] of feeds) {
    if (feed.leave(port)) {
      feed.close();
      feeds.delete(url);
    }
  }
}

self.onconnect = (e) => {
  const port = e.ports[0];
  port.onmessage = (m) => {
    const msg = m.data;
    if (msg.type === "follow") {
      leave(port); // a tab follows one stream
      if (!feeds.has(msg.url)) feeds.set(msg.url, new Feed(msg.url));
      feeds.get(msg.url).join(port);
    } else if (msg.type === "leave") {
      leave(port);
    }
  };
};

self.addEventListener("error", (e) => {
  for (const feed of feeds.values()) feed.post({ type: "error", message: String(e.message) });
});
