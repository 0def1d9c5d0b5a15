"""Stage 2: an :class:`~newsletter.models.Issue` rendered once into a :class:`~newsletter.models.RenderedIssue`.

The only importer of Jinja2, mjml-python and premailer. ``engine`` runs the template
(Jinja2, then MJML, then CSS inlined); ``markup`` writes the issue's content as HTML
fragments; ``plaintext`` writes the hand-quality text part from the ``Issue`` itself;
``bidi`` keeps right-to-left and left-to-right text in order in both.
"""
