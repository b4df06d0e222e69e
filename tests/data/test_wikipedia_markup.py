"""wikitext.clean: each kind of MediaWiki markup, on hand-written wikitext, with the exact prose expected."""

from __future__ import annotations

import pytest

from gptforge.data.sources.wikitext import WikiNames, clean, strip_tables, strip_templates


@pytest.mark.parametrize(
    "wikitext, expected",
    [
        # templates and parser functions, nested, multi-line, with parameters
        ("A {{convert|4|km|mi}} walk.", "A walk."),
        (
            "{{Infobox person\n| name = {{lang|fr|Jean}}\n| born = {{birth date|1900|1|1}}\n}}\nJean was born.",
            "Jean was born.",
        ),
        ("Size {{#if:{{{size|}}}|{{{size}}}|none}} here.", "Size here."),
        ("{{DEFAULTSORT:Doe, Jane}}{{DISPLAYTITLE:''Jane''}}Jane Doe.", "Jane Doe."),
        ("Closes on a param line\n{{Infobox\n| a = b\n|}}\nafter.", "Closes on a param line\n\nafter."),
        # tables, including one inside a template and one never closed
        ('Before.\n{| class="wikitable"\n! H1 !! H2\n|-\n| a || b\n|}\nAfter.', "Before.\nAfter."),
        ("Text.\n:{| \n| indented table\n|}\nMore.", "Text.\nMore."),
        ("Text.\n{|\n| never closed\n| row\n\nNext paragraph.", "Text.\n\nNext paragraph."),
        # references, named and self-closing, holding templates
        (
            'Fact.<ref name="a">{{cite web|url=http://x.org|title=T}}</ref> More.<ref name=a/> End.<references/>',
            "Fact. More. End.",
        ),
        ("Claim<ref group=n>note with [[link]]</ref>.", "Claim."),
        # files and images with captions holding links, in English and another wiki's names
        ("[[File:Sun.jpg|thumb|The [[Sun]] at [[noon]] [seen from Earth]]]\nThe Sun shines.", "The Sun shines."),
        ("Text [[Image:A.png|left|200px]] continues.", "Text continues."),
        ("[[Datei:Sonne.jpg|mini|Die Sonne]]Sonne.", "Sonne."),
        # categories and interlanguage links vanish; an inline category link keeps its text
        ("Body.\n[[Category:Stars]]\n[[Category:Things|Sort]]\n[[de:Stern]] [[zh-min-nan:Chheⁿ]]", "Body."),
        ("See [[:Category:Stars|the star list]] and [[:Category:Moons]].", "See the star list and Category:Moons."),
        # internal links keep their label; pipe trick; link trail
        ("[[Paris]] is in [[France|the French Republic]]; [[apple]]s.", "Paris is in the French Republic; apples."),
        ("[[Paris (Texas)|]] and [[Help:Contents|]].", "Paris and Contents."),
        ("A [[wikt:star|star]] word.", "A star word."),
        # external links: the label stays, a bare bracketed URL goes, a bare URL is text
        ("See [http://example.org the site] or [http://example.org].", "See the site or."),
        ('[http://x.org/talk "Talk" (at [[UC Berkeley|Berkeley]], 1962)]', '"Talk" (at Berkeley, 1962)'),
        # HTML tags and comments; <br> ends a line; code, math and galleries vanish
        ('<div class="x">Kept <span>text</span><!-- hidden [[x]] --></div>', "Kept text"),
        ("One<br/>two<br>three", "One\ntwo\nthree"),
        ("E is <math>mc^{2}</math> energy.<gallery>\nA.jpg|cap\n</gallery>", "E is energy."),
        ("Unclosed comment <!-- runs to the end", "Unclosed comment"),
        # magic words, bold and italic quotes
        ("__NOTOC__'''Bold''' and ''italic'' and '''''both'''''.__NOEDITSECTION__", "Bold and italic and both."),
        ("The dog's ''bone''.", "The dog's bone."),
        # section titles as plain lines; closing empty sections dropped
        (
            "Intro.\n== History ==\nOld.\n=== Early ===\nVery old.\n"
            "== References ==\n{{reflist}}\n== External links ==\n",
            "Intro.\nHistory\nOld.\nEarly\nVery old.",
        ),
        # lists kept as lines
        (
            "Items:\n* one\n** one.one\n# two\n; term : definition\n: indented",
            "Items:\none\none.one\ntwo\nterm : definition\nindented",
        ),
        # HTML entities decoded, non-breaking spaces become spaces
        ("5&nbsp;km &mdash; caf&eacute; &lt;b&gt; &#169; &#x263A;", "5 km — café <b> © ☺"),
        # leftovers of removed markup tidied: empty parentheses, space before punctuation
        ("Athens ({{lang-el|Αθήνα}}) is old {{citation needed}}.", "Athens is old."),
        (
            "Lincoln ({{IPAc-en|l|ɪ|ŋ|k|ə|n}}; February 12, 1809 {{ndash}} 1865) "
            "and Achilles ({{IPAc-en|ə}};, Akhilleus, {{IPA|x}}).",
            "Lincoln (February 12, 1809 1865) and Achilles (Akhilleus).",
        ),
        ("Sources:\n* {{cite book|title=X}}.\n* Real source.", "Sources:\nReal source."),
        # a namespaced link closing a caption: "]]]]" is its end, then the image's
        ("[[File:A.jpg|thumb|A [[Category:B]]]]Text [[a|[[b]]]].", "Text b."),
        # unbalanced: an unclosed element loses its tag only, "</ref x>" closes nothing, stray closers go
        ("A<ref>unclosed note\nB", "Aunclosed note\nB"),
        ("x <ref>a</ref x> b</ref> c </math>", "x c"),
        ("[[unclosed link and ]] stray", "unclosed link and stray"),
    ],
)
def test_clean(wikitext, expected):
    assert clean(wikitext) == expected


def test_unclosed_template_is_cut_to_its_line_end_and_the_rest_survives():
    text = "Start {{cite web|url=x\nSecond line {{ok}} stays.\nThird."
    assert strip_templates(text) == "Start \nSecond line  stays.\nThird."


def test_brace_runs_balance_like_mediawiki():
    assert strip_templates("a{{{1}}}b{{x|{{y}}}}c{{{{z}}}}d") == "abcd"
    assert strip_templates("stray }} and {{ok}} end") == "stray }} and  end"


def test_tables_nest():
    assert strip_tables("\nA\n{|\n|\n{|\n| inner\n|}\n| outer\n|}\nB") == "\nA\nB"


def test_localized_namespaces_from_siteinfo():
    names = WikiNames.from_siteinfo({6: "Berkas", 14: "Kategori"})
    text = "Teks.[[Berkas:Peta.png|jmpl|Peta]]\n[[Kategori:Bintang]]"
    assert clean(text, names) == "Teks."
    assert names.namespace_of("Pembicaraan:Foo") == 0  # unknown prefix: main namespace
    assert WikiNames.from_siteinfo({1: "Pembicaraan"}).namespace_of("Pembicaraan:Foo") == 1


def test_media_file_link_dropped_whatever_its_namespace_is_called():
    assert clean("Text.[[Fitxer:Mapa.svg|miniatura|Mapa]] End.") == "Text. End."


def test_nul_characters_are_dropped():
    assert clean("a\x00b\n== H ==\nx") == "ab\nH\nx"


def test_an_article_of_only_markup_cleans_to_nothing():
    assert clean("{{Short description|x}}\n{{stub}}\n[[Category:Stubs]]\n__NOTOC__") == ""
